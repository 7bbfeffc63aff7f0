//! Audit events, formats and sinks (see the audit pipeline issue).
