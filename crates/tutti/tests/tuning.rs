//! The cost model at creation: every rank ends with the same model, whatever its own setting;
//! a model file pins it; the communicator's choices follow the model.

mod common;

use common::{on_world, quick};
use tutti::tune::{agree, TuneSetting};
use tutti::ReduceOp;
use tutti_core::model::{Model, Op as ModelOp, Tuning};
use tutti_core::DType;

#[test]
fn every_rank_agrees_on_one_measured_model_in_well_under_a_second() {
    for n in [2, 3, 4] {
        let out = on_world(n, quick(20), |c| {
            let started = std::time::Instant::now();
            let t = agree(&c, &TuneSetting::Measure).unwrap();
            (t, started.elapsed())
        });
        let first = out[0].0.clone().expect("a measured model");
        for (t, took) in &out {
            assert_eq!(t.as_ref(), Some(&first), "ranks disagree");
            assert!(took.as_secs_f64() < 2.0, "tuning took {took:?}");
        }
        let m = first.model;
        assert!(m.alpha_s > 0.0 && m.alpha_s < 0.05, "{m:?}");
        assert!(m.beta_s_per_byte > 0.0 && m.beta_s_per_byte < 1e-6, "{m:?}");
        assert_eq!(first.gamma_by_dtype.len(), DType::ALL.len());
        // Bucketed: a half-octave, so measuring again lands on the same values most of the time.
        assert_eq!(first.bucketed(), first);
    }
}

#[test]
fn rank_zeros_setting_decides_and_a_file_pins_the_model() {
    let dir = std::env::temp_dir().join(format!("tutti-tune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Rank 0 off, the others measuring: nobody measures, nobody waits.
    let out = on_world(3, quick(10), |c| {
        let s = if c.rank() == 0 {
            TuneSetting::Off
        } else {
            TuneSetting::Measure
        };
        agree(&c, &s).unwrap()
    });
    assert!(out.iter().all(Option::is_none), "{out:?}");
    // A file only rank 0 can read: every rank gets its values.
    let pinned = Tuning::of(Model::link(3e-3, 8e-8));
    let path = dir.join("pinned.model");
    std::fs::write(&path, pinned.to_text(&[])).unwrap();
    let p = path.clone();
    let out = on_world(3, quick(10), move |c| {
        let s = if c.rank() == 0 {
            TuneSetting::File(p.clone())
        } else {
            TuneSetting::Off
        };
        agree(&c, &s).unwrap()
    });
    for t in out {
        assert_eq!(t.unwrap().model, pinned.model);
    }
    // A missing file is measured and written (a cache), then read back.
    let cache = dir.join("cache.model");
    let c2 = cache.clone();
    let first = on_world(2, quick(10), move |c| {
        agree(&c, &TuneSetting::File(c2.clone())).unwrap()
    });
    let text = std::fs::read_to_string(&cache).expect("rank 0 wrote the cache");
    assert_eq!(Tuning::parse(&text).unwrap(), first[0].clone().unwrap());
    // A malformed file is an error on rank 0, and the others fail instead of hanging.
    std::fs::write(&path, "# tutti model 1\nalpha_s fast\n").unwrap();
    let p = path.clone();
    let out = on_world(2, quick(3), move |c| {
        agree(&c, &TuneSetting::File(p.clone()))
            .err()
            .map(|e| e.to_string())
    });
    let e0 = out[0].as_deref().expect("rank 0 fails");
    assert!(e0.contains("pinned.model") && e0.contains("fast"), "{e0}");
    assert!(out[1].is_some(), "rank 1 must fail too");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_choice_follows_the_model_and_forcing_wins() {
    // A WAN-like model makes small all-reduces latency-bound (fewest messages) and large ones
    // bandwidth-bound; a forced algorithm stays forced.
    let out = on_world(4, quick(10), |c| {
        c.set_tuning(Some(Tuning::of(Model::profile("wan").unwrap())));
        let small = c.plan_of(ModelOp::AllReduce, Some(DType::F32), 8);
        let large = c.plan_of(ModelOp::AllReduce, Some(DType::F32), 64 << 20);
        // The calls run with what was chosen, and give the right sums.
        let mut buf = vec![1f32; 2];
        c.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
        assert_eq!(buf, [4.0, 4.0]);
        c.set_algorithms(c.algorithms().parse("allreduce:naive").unwrap());
        let forced = c.plan_of(ModelOp::AllReduce, Some(DType::F32), 8);
        c.set_tuning(None);
        let none = c.plan_of(ModelOp::Broadcast, Some(DType::F32), 8);
        (small, large, forced, none)
    });
    for (small, large, forced, none) in out {
        assert_eq!(
            small.algorithm.name(),
            "recursive_doubling",
            "{}",
            small.reason
        );
        assert!(
            ["ring", "rabenseifner"].contains(&large.algorithm.name()),
            "{} {}",
            large.algorithm,
            large.reason
        );
        assert_eq!(forced.algorithm.name(), "naive");
        assert_eq!(none.algorithm.name(), "chain");
        assert!(none.reason.contains("no cost model"), "{}", none.reason);
    }
}
