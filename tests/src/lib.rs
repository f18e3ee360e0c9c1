//! Real control-plane harness.
