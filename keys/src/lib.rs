//! Key providers, envelope encryption and credential lifecycle.
