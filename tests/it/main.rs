//! One integration-test binary. Each module is one capability, exercised through the real
//! `cpbackup` binary against real temp directories (and, where storage is remote, a real
//! Garage server started by `support::garage`).

mod support;

mod android;
mod appdetails;
mod crash;
mod cross;
mod daemon;
mod diskfull;
mod encryption;
mod faults;
mod formats;
mod malicious;
mod neighbour;
mod net;
mod repo;
mod roundtrip;
mod s3;
mod transfer;
