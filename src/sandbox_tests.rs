//! The sandbox's unit tests (beside `sandbox.rs`, which is long enough).

use super::*;

fn gaps(keep: &[RawFd]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for_each_gap(keep, |lo, hi| {
        out.push((lo, hi));
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn the_descriptor_sweep_skips_stdio_and_kept_descriptors() {
    const MAX: u32 = u32::MAX;
    type Case = (&'static [RawFd], &'static [(u32, u32)]);
    let table: &[Case] = &[
        (&[], &[(3, MAX)]),
        (&[0, 1, 2], &[(3, MAX)]),
        (&[3], &[(4, MAX)]),
        (&[5], &[(3, 4), (6, MAX)]),
        (&[5, 6, 9], &[(3, 4), (7, 8), (10, MAX)]),
        (&[-1, 4], &[(3, 3), (5, MAX)]),
    ];
    for (keep, want) in table {
        assert_eq!(gaps(keep), *want, "keep {keep:?}");
    }
}

#[test]
fn kept_descriptors_stay_sorted_and_unique() {
    let mut p = prepare(&SandboxPolicy {
        off: true,
        ..Default::default()
    })
    .unwrap();
    for fd in [9, 4, 9, 6] {
        p.keep_open(fd);
    }
    assert_eq!(p.keep, vec![4, 6, 9]);
}

#[test]
fn the_profile_builds() {
    let p = prepare(&SandboxPolicy {
        writable: vec![std::env::temp_dir()],
        ..Default::default()
    })
    .unwrap();
    assert!(p.ruleset.is_some() && p.bpf.is_some());
    assert!(
        prepare(&SandboxPolicy {
            off: true,
            ..Default::default()
        })
        .unwrap()
        .bpf
        .is_none()
    );
    let s = support();
    assert!(s.landlock.starts_with('v') || s.landlock == "unsupported");
}
