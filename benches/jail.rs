//! Jail benchmark: what the jail and seccomp cost at start-up, as
//! spawn -> API socket ready for ember alone (with and without seccomp) and
//! for `ember-jailer` running ember in its jail (chroot, mount namespace,
//! cgroup, rlimits, privileges dropped), also with a new PID namespace and
//! daemonized.
//!
//! `cargo bench --bench jail [-- --short] [-- --json PATH]`. Needs root.

use ember_test_support::bench::{micros, print_table, BenchArgs, Samples};
use ember_test_support::{require_kvm, require_root, Ember, Jail, TempDir};
use serde_json::json;

fn ember_alone(samples: &mut Samples, extra: &[&str]) {
    let dir = TempDir::new("jail-bench");
    let ember = Ember::with_api(&dir, extra);
    samples.values.push(micros(ember.spawned_at.elapsed()));
}

fn jailed(samples: &mut Samples, run: usize, extra: &[&str]) {
    let jail = Jail::start(&format!("bench-{run}"), extra);
    samples
        .values
        .push(micros(jail.api_ready_at - jail.spawned_at));
}

fn main() {
    let args = BenchArgs::parse("jail");
    require_kvm();
    require_root();
    let runs = if args.short { 5 } else { 30 };
    let mut seccomp = Samples::new("ember spawn -> API ready (seccomp on)", "us");
    let mut bare = Samples::new("ember --no-seccomp spawn -> API ready", "us");
    let mut jail = Samples::new("ember-jailer spawn -> jailed API ready", "us");
    let mut jail_pidns = Samples::new("... with --new-pid-ns --daemonize", "us");
    for run in 0..runs {
        ember_alone(&mut seccomp, &[]);
        ember_alone(&mut bare, &["--no-seccomp"]);
        jailed(&mut jail, 2 * run, &[]);
        jailed(
            &mut jail_pidns,
            2 * run + 1,
            &["--new-pid-ns", "--daemonize"],
        );
    }
    println!("\nember jail benchmark: {runs} runs each\n");
    let results = print_table(&[&seccomp, &bare, &jail, &jail_pidns]);
    let cost = jail.percentile(50.0) - seccomp.percentile(50.0);
    println!("\nthe jail adds {cost:.0} us to spawn -> API ready (medians)\n");
    let report = json!({"benchmark": "jail", "short": args.short, "results": results,
        "jail_cost_us_p50": cost});
    args.write_report(&report);
}
