//! The README tour: two enrolled phones of the demo grid 东村第一网格 (worker 王 and grid head
//! 孙, codes from `qiaomen-server admin seed-demo`) record visits offline on the same
//! household, sync with the running server, and print the merged record.
//!
//! `cargo run -p qiaomen-tests --bin two_phones -- http://127.0.0.1:8080 CODE_WANG CODE_SUN`

use qiaomen_protocol::calendar;
use qiaomen_tests::{Phone, sample_visit};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: two_phones URL CODE_WANG CODE_SUN (codes from `qiaomen-server admin seed-demo`)";
    let url = args.next().ok_or(usage)?;
    let (code_a, code_b) = (args.next().ok_or(usage)?, args.next().ok_or(usage)?);
    let dir = tempfile::tempdir()?;
    let mut wang = Phone::enroll(&dir.path().join("wang.db"), &url, &code_a)?;
    let mut li = Phone::enroll(&dir.path().join("sun.db"), &url, &code_b)?;

    // Both phones receive their grid's households.
    wang.sync()?;
    li.sync()?;
    let id = *wang
        .store
        .household_ids()?
        .first()
        .ok_or("the demo grid has no households: run `admin seed-demo` first")?;
    println!(
        "enrolled; {} households in the grid",
        wang.store.household_ids()?.len()
    );

    // Offline, both visit on the 15th and both correct the door number differently.
    let day = calendar::visit_days_of_month(2026, 11).expect("a month")[0];
    wang.store.record_visit(
        id,
        &sample_visit(&wang.author, day, "王：老人身体还好"),
        &[],
    )?;
    li.store.record_visit(
        id,
        &sample_visit(&li.author, day, "孙：补访，送去降压药"),
        &[],
    )?;
    wang.store.edit_household(id, |h| {
        h.door_number = "17A".into();
        Ok(())
    })?;
    li.store.edit_household(id, |h| {
        h.door_number = "17-1".into();
        Ok(())
    })?;
    println!(
        "pending before sync: wang {}, li {}",
        wang.store.pending_change_count()?,
        li.store.pending_change_count()?
    );

    // Back in signal: each syncs once (one round trip), then Wang once more to get Li's edits.
    for (name, phone) in [("wang", &mut wang), ("sun", &mut li)] {
        let r = phone.sync()?;
        println!(
            "{name}: {} round trip(s), {} B up, {} B down",
            r.progress.round_trips, r.progress.bytes_up, r.progress.bytes_down
        );
    }
    wang.sync()?;

    let merged = wang.store.household(id)?;
    assert_eq!(merged, li.store.household(id)?);
    println!(
        "\nmerged household {} ({} visits):",
        merged.id,
        merged.visits.len()
    );
    for v in merged.visits.values() {
        println!(
            "  {} by device {}: {}",
            v.visit_day,
            v.device,
            v.note.as_str()
        );
    }
    for c in wang.store.conflicts(id)? {
        println!("  conflict at {}:", c.path.join("/"));
        for v in &c.values {
            let who = v.author.map(|a| a.device.to_string()).unwrap_or_default();
            println!("    {} (device {who}, at {} ms)", v.value, v.at_ms);
        }
    }
    Ok(())
}
