//! Local Kubernetes control planes for Skyloom's tests and demo.
