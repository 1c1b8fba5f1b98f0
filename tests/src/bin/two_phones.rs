//! The README tour: two simulated phones record visits offline on the same household, sync
//! with a running server, and print the merged record.
//!
//! `cargo run -p qiaomen-tests --bin two_phones -- http://127.0.0.1:8080`

use qiaomen_protocol::{calendar, ids::*, schema::*};
use qiaomen_tests::{Phone, sample_visit};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let dir = tempfile::tempdir()?;
    let grid = format!("demo-{}", &HouseholdId::new().to_string()[..8]);
    let mut wang = Phone::new(&dir.path().join("wang.db"), &url, &[grid.as_str()]);
    let mut li = Phone::new(&dir.path().join("li.db"), &url, &[grid.as_str()]);

    // Worker Wang registers a household and syncs; Li's phone receives it.
    let mut hh = Household::new(
        HouseholdId::new(),
        GridId::new(grid.clone()),
        "东村三组",
        "17",
    );
    hh.tags.push(TagSpan {
        group: KeyGroup::ElderlyAlone,
        since: "2024-03-01".parse()?,
        until: None,
    });
    let id = wang.store.create_household(&hh)?;
    wang.sync()?;
    li.sync()?;

    // Offline, both visit on the 15th and both correct the door number differently.
    let day = calendar::visit_days_of_month(2026, 11).expect("a month")[0];
    wang.store.record_visit(
        id,
        &sample_visit(&wang.author, day, "王：老人身体还好"),
        &[],
    )?;
    li.store.record_visit(
        id,
        &sample_visit(&li.author, day, "李：补访，送去降压药"),
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
    for (name, phone) in [("wang", &mut wang), ("li", &mut li)] {
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
