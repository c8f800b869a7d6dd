//! Skyloom's placement solver: a pure function from a snapshot to a decision.
