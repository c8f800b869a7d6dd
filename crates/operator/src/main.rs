//! `skyloom`: the operator and its command line.

fn main() {}
