//! Skyloom's custom resources (`skyloom.io/v1alpha1`).
