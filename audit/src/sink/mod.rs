//! Where encoded events go. Only the file sink exists so far; network sinks (syslog
//! over TCP/TLS, HTTP, NATS JetStream) will sit beside it, one folder each.

pub mod file;
