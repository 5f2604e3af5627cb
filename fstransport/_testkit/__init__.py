"""Test kit for fstransport and for code built on it (to become ``fstransport.testing``).

- `fstransport._testkit.clock.FakeClock`: virtual time for asyncio (instant backoffs and TTLs);
- `fstransport._testkit.mock.MockNetwork`: a `Network` whose requests go to a function of yours;
- `fstransport._testkit.network_suite`: a conformance suite for `Network` adapters (mixin);
- `fstransport._testkit.store_suite`: a conformance suite for `SnapshotStore`s (mixin), bound
  through a `fstransport._testkit.store_target.Target`.

The suites import pytest; this package itself does not.
"""
