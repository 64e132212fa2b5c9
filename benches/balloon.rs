//! Balloon benchmark: a function VM writes 160 MiB, then the balloon inflates by
//! 100 MiB and deflates again; the table gives the time from `PATCH /balloon` to
//! the guest holding the target (the host has the pages back by then) and how
//! far ember's RSS fell.
//!
//! `cargo bench --bench balloon [-- --short] [-- --json PATH]`

use ember_test_support::bench::{micros, print_table, BenchArgs, Samples};
use ember_test_support::{artifact, require_kvm, resident_mib, Ember, TempDir};
use serde_json::json;

const GUEST_MIB: u64 = 256;
const TOUCHED_MIB: u64 = 160;
/// The inflate the target names.
const INFLATE_MIB: u64 = 100;

fn main() {
    let args = BenchArgs::parse("balloon");
    require_kvm();
    let runs = if args.short { 3 } else { 20 };
    let dir = TempDir::new("bench-balloon");
    let balloon = json!({"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1});
    let ember = Ember::with_balloon(&dir, &artifact("unikernel-memory"), GUEST_MIB, &balloon);

    let mut inflate = Samples::new("inflate 100 MiB: PATCH -> guest holds it", "us");
    let mut deflate = Samples::new("deflate 100 MiB: PATCH -> guest has it back", "us");
    let mut freed = Samples::new("ember RSS given back by the inflate", "MiB");
    for _ in 0..runs {
        let (status, _) = ember.invoke(TOUCHED_MIB.to_string().as_bytes());
        assert_eq!(status, 200);
        let before = resident_mib(ember.pid());
        inflate
            .values
            .push(micros(ember.steer_balloon(INFLATE_MIB)));
        freed.values.push(before - resident_mib(ember.pid()));
        deflate.values.push(micros(ember.steer_balloon(0)));
    }
    let rows = print_table(&[&inflate, &deflate, &freed]);
    args.write_report(&json!({"benchmark": "balloon", "guest_mib": GUEST_MIB, "rows": rows}));
}
