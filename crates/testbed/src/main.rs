//! `skyloom-testbed`: start, inspect and break local clusters.

fn main() {}
