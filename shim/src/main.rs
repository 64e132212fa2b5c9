//! `containerd-shim-ember-v2`: containerd's runtime `io.containerd.ember.v2`,
//! which runs each task of a function image as a jailed ember microVM.

mod cache;
mod ember_api;
mod function;
mod netns;
mod network;
mod record;
mod service;
mod vm;

fn main() {
    containerd_shim::run::<service::Service>("io.containerd.ember.v2", None);
}
