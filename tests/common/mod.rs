//! Helpers shared by the workspace's command-line tests.
// Each test binary includes this module and uses a part of it.
#![allow(dead_code)]

pub mod s3;
