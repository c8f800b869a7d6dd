//! Condition types and reasons shared by both kinds, following kstatus conventions.
//!
//! kstatus (used by `kubectl wait`, Argo CD, Flux) reads `Ready`, `Reconciling` and `Stalled`:
//! `Reconciling=True` means work is in flight, `Stalled=True` means the object will not make
//! progress without a change, `Ready=True` means it is done for the current generation. Every
//! condition carries its own `observedGeneration`.

/// The object is in its desired state for the current generation.
pub const READY: &str = "Ready";
/// The controller is working towards the desired state (abnormal-true: set only while busy).
pub const RECONCILING: &str = "Reconciling";
/// The controller cannot make progress without a change to the spec or the environment
/// (abnormal-true).
pub const STALLED: &str = "Stalled";

/// The condition's status strings.
pub mod status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// Not known yet.
    pub const UNKNOWN: &str = "Unknown";
}

/// Reasons that both kinds use.
pub mod reason {
    /// The spec failed validation that the schema cannot express; fix the spec.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The last reconcile finished and nothing is pending.
    pub const RECONCILED: &str = "Reconciled";
    /// A new generation has been seen and is being worked on.
    pub const NEW_GENERATION: &str = "NewGeneration";
    /// The object is being deleted; its cleanup waits on the members named in the message.
    pub const TERMINATING: &str = "Terminating";
}
