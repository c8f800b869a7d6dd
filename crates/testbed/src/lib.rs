//! Real Kubernetes control planes as local processes on loopback, for Skyloom's tests and demo.
//!
//! A [`Testbed`] is one etcd (each cluster under its own prefix), an optional hub cluster and
//! member clusters. Each cluster runs kube-apiserver and kube-controller-manager; members add
//! kube-scheduler and kwok with fake Nodes, so Deployments get Pods that are scheduled against
//! real capacity (cpu, memory, `nvidia.com/gpu`) and become Running. Every member's apiserver
//! sits behind a [`proxy::FaultProxy`], so a test can cut it off, slow it down, pause or kill it;
//! [`Member::open_endpoint`] adds further proxied ways in that are cut on their own. Every
//! apiserver writes an audit log of write requests ([`Member::audit_writes`]) and of the reads
//! of a few kinds ([`Member::audit_requests`]).
//!
//! The binaries are built by `scripts/testbed-install` at the versions in `versions.env`.

pub mod audit;
pub mod binaries;
pub mod control;
pub mod error;
pub mod kubeconfig;
pub mod member;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod spec;
pub mod testbed;

pub use audit::{AuditRequest, AuditWrite};
pub use binaries::Binaries;
pub use error::TestbedError;
pub use member::{Member, Role};
pub use proxy::Endpoint;
pub use spec::{MemberSpec, NodeGroup, TestbedSpec};
pub use testbed::Testbed;
