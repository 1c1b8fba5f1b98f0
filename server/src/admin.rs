//! `qiaomen-server admin …`: the org, users, assignments, enrollment codes and devices, run
//! on the server machine against its data folder (the server may be running: SQLite's WAL
//! lets both work on the file).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use clap::{Args, Subcommand};
use qiaomen_protocol::{
    calendar::Day,
    doc::{Author, HouseholdDoc},
    ids::{DeviceId, GridId, HouseholdId, MemberId, UserId},
    schema::{Household, KeyGroup, Member, Relation, TagSpan},
    wire::DocChanges,
};
use serde_bytes::ByteBuf;

use crate::{
    access::{
        AccessDb, AccessError, Role,
        admin_ops::{self, By},
        audit::Event,
        now_ms,
        org::{UnitKind, day_start_ms},
        tokens::DeviceRow,
    },
    ingest::{Ingestor, Upload},
    storage::{PgStorage, SqliteStorage, Storage},
};

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Print the recorded settings (JSON).
    Show,
    /// Record the settings of a workflow file: servers started from now on must run with
    /// them (restart each with `--workflow FILE`).
    Set { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create, close or list org units (county → town → village → grid).
    #[command(subcommand)]
    Unit(UnitCommand),
    /// Create users and set passwords.
    #[command(subcommand)]
    User(UserCommand),
    /// Assign a user to a unit with a role, from a day on.
    Assign {
        #[arg(long)]
        login: String,
        #[arg(long)]
        unit: String,
        /// grid_worker, grid_head, village_supervisor, town_supervisor, command_centre, admin
        #[arg(long)]
        role: String,
        /// First day of the assignment (default: now).
        #[arg(long)]
        from: Option<Day>,
    },
    /// End a user's assignment at a unit (default: now).
    Unassign {
        #[arg(long)]
        login: String,
        #[arg(long)]
        unit: String,
        #[arg(long)]
        on: Option<Day>,
    },
    /// List assignments.
    Assignments,
    /// Issue a one-time enrollment code for one of a user's phones.
    EnrollCode {
        #[arg(long)]
        login: String,
    },
    /// List enrolled devices: id, login, status (active, retiring, retired, revoked), when it
    /// last synced, and what it reported still holding then (changes and task reports not yet
    /// on the server; `?` for a phone that does not report it).
    Devices,
    /// Retire a device (a handover: you have the phone). It goes on syncing and uploads what it
    /// holds; then it wipes the user's data and its token is refused (`device_retired`).
    Retire {
        #[arg(long)]
        device: DeviceId,
    },
    /// Revoke a device (lost or stolen): its next request gets 401 and the phone wipes the
    /// user's data at once, losing what it had not uploaded. Refused while the device last
    /// reported such work, unless --force.
    Revoke {
        #[arg(long)]
        device: DeviceId,
        /// Revoke even though the device last reported work it has not uploaded.
        #[arg(long)]
        force: bool,
    },
    /// List quarantined households (their stored document does not load; uploads to them
    /// are refused `quarantined` and phones keep their changes), or release one after a fix.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Export the changes the server refused (kept, never applied), newest first, one JSON
    /// object a line: household, grid, device, user, code, reason, time and what each held.
    #[command(subcommand)]
    Refused(RefusedCommand),
    /// Copy the embedded store of the data folder into an empty PostgreSQL database and
    /// verify the copy (the server stopped). Then start the servers with `--database`.
    Migrate {
        /// The target, `postgres://user@host:port/database`.
        #[arg(long)]
        to: String,
    },
    /// The workflow settings every server on a PostgreSQL database must run with.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Print the audit log.
    Audit {
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Copy the whole store to a new file while the server serves (SQLite's online backup:
    /// the store at one moment, every change acknowledged before it in the copy).
    Backup {
        /// The file to write; it must not exist.
        #[arg(long)]
        to: PathBuf,
    },
    /// Put a backup in place of the store; the server must be stopped. The store it
    /// replaces is kept in `before-restore-<ms>/` in the data folder.
    Restore {
        #[arg(long)]
        from: PathBuf,
    },
    /// Create a small demo county (a town, two villages, three grids, workers, supervisors,
    /// households with members and key-group tags) and print enrollment codes and passwords.
    SeedDemo,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// One line per quarantined household: id, reason, since (ms), and whether its stored
    /// document loads now.
    List,
    /// Take a household out of quarantine: its uploads are checked again from the next sync.
    Release {
        #[arg(long)]
        household: HouseholdId,
    },
}

#[derive(Debug, Subcommand)]
pub enum RefusedCommand {
    /// Write every kept refusal (of one grid with `--grid`) as JSON lines to `--to` (or
    /// standard output). Holds residents' data: keep the file as the records are kept.
    Export {
        #[arg(long)]
        grid: Option<String>,
        #[arg(long)]
        to: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UnitCommand {
    Add {
        #[arg(long)]
        id: String,
        /// county, town, village or grid
        #[arg(long)]
        kind: String,
        #[arg(long)]
        parent: Option<String>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        from: Option<Day>,
    },
    /// Close a unit on a day (a re-division); its history stays.
    Close {
        #[arg(long)]
        id: String,
        #[arg(long)]
        on: Day,
    },
    List,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    Add {
        #[arg(long)]
        login: String,
        #[arg(long)]
        name: String,
    },
    /// Set a password (read from the environment variable QIAOMEN_PASSWORD, else stdin).
    Password {
        #[arg(long)]
        login: String,
    },
}

/// The `admin` arguments.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

fn today() -> Day {
    Day::from_unix_ms(now_ms(), 8 * 3600).expect("a representable date")
}

fn user_id(db: &AccessDb, login: &str) -> Result<UserId, AccessError> {
    db.user_by_login(login)
}

/// Where an admin command works: the embedded store of a data folder, or a PostgreSQL
/// database (`--database`).
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Embedded(&'a Path),
    Postgres(&'a str),
}

impl Target<'_> {
    /// The access tables (opening them migrates the store).
    pub fn access(&self) -> Result<AccessDb, Box<dyn std::error::Error>> {
        Ok(match *self {
            Target::Embedded(dir) => AccessDb::open(dir)?,
            Target::Postgres(url) => AccessDb::on_postgres(&PgStorage::connect(url, 2)?),
        })
    }

    /// A handle on the change log.
    pub fn log(&self) -> Result<Box<dyn Storage>, Box<dyn std::error::Error>> {
        Ok(match *self {
            Target::Embedded(dir) => Box::new(SqliteStorage::open(dir)?),
            Target::Postgres(url) => Box::new(PgStorage::connect(url, 2)?),
        })
    }
}

/// Runs one admin command against the store in `data_dir`, printing its result.
pub fn run(data_dir: &Path, command: AdminCommand) -> Result<(), Box<dyn std::error::Error>> {
    run_on(Target::Embedded(data_dir), command)
}

/// Runs one admin command against `target`, printing its result.
pub fn run_on(target: Target<'_>, command: AdminCommand) -> Result<(), Box<dyn std::error::Error>> {
    // These two take the store's file as it is: opening the access tables would migrate it.
    let backup_of = |what: &str| match target {
        Target::Embedded(dir) => Ok(dir),
        Target::Postgres(_) => Err(format!(
            "admin {what} copies the embedded store; back up PostgreSQL with pg_dump (README)"
        )),
    };
    match &command {
        AdminCommand::Backup { to } => {
            let s = crate::backup::backup(backup_of("backup")?, to)?;
            println!(
                "备份完成：{}（日志序号 {}，{} 户，{} 字节）",
                to.display(),
                s.log_seq,
                s.households,
                s.bytes
            );
            return Ok(());
        }
        AdminCommand::Migrate { to } => {
            let Target::Embedded(dir) = target else {
                return Err("admin migrate copies the embedded store of --data-dir into --to; leave out --database".into());
            };
            let m = crate::migrate::migrate(dir, to)?;
            for (table, rows) in &m.rows {
                println!("{table}\t{rows}");
            }
            println!(
                "已迁移并核对：日志序号 {}，{} 户，每户的版本一致。用 --database 启动服务器。",
                m.log_seq, m.households
            );
            return Ok(());
        }
        AdminCommand::Restore { from } => {
            let (s, aside) = crate::backup::restore(backup_of("restore")?, from)?;
            println!(
                "已恢复：{}（日志序号 {}，{} 户）。",
                from.display(),
                s.log_seq,
                s.households
            );
            if let Some(dir) = aside {
                println!("原来的数据已移到 {}，未删除。", dir.display());
            }
            println!("备份之后同步过的手机会在下次同步时重新上传它们记录的内容。");
            return Ok(());
        }
        _ => {}
    }
    let mut db = target.access()?;
    let admin_event = |action: &str, target: &str| {
        db.audit(Event {
            user: None,
            device: None,
            action,
            target: Some(target),
            outcome: "ok:cli",
        })
    };
    match command {
        AdminCommand::Unit(UnitCommand::Add {
            id,
            kind,
            parent,
            name,
            from,
        }) => {
            admin_ops::add_unit(
                &mut db,
                By::Cli,
                &id,
                &kind,
                parent.as_deref(),
                &name,
                from.unwrap_or_else(today),
            )?;
            println!("unit {id} created");
        }
        AdminCommand::Unit(UnitCommand::Close { id, on }) => {
            admin_ops::close_unit(&mut db, By::Cli, &id, on)?;
            println!("unit {id} closed on {on}");
        }
        AdminCommand::Unit(UnitCommand::List) => {
            for u in db.units()? {
                println!(
                    "{}\t{}\t{}\t{}\t{}..{}",
                    u.id,
                    u.kind.as_str(),
                    u.parent.unwrap_or_default(),
                    u.name,
                    u.valid_from,
                    u.valid_until.unwrap_or_default()
                );
            }
        }
        AdminCommand::User(UserCommand::Add { login, name }) => {
            let id = admin_ops::add_user(&mut db, By::Cli, &login, &name)?;
            println!("user {login} created: {id}");
        }
        AdminCommand::User(UserCommand::Password { login }) => {
            let password = match std::env::var("QIAOMEN_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            db.set_password(user_id(&db, &login)?, &password)?;
            admin_event("set_password", &login)?;
            println!("password of {login} set");
        }
        AdminCommand::Assign {
            login,
            unit,
            role,
            from,
        } => {
            let from_ms = from.map(day_start_ms).unwrap_or_else(now_ms);
            let role = admin_ops::assign(&mut db, By::Cli, &login, &unit, &role, from_ms)?;
            println!("{login} is {} at {unit}", role.as_str());
        }
        AdminCommand::Unassign { login, unit, on } => {
            let until = on.map(day_start_ms).unwrap_or_else(now_ms);
            admin_ops::unassign(&mut db, By::Cli, &login, &unit, until)?;
            println!("{login} no longer at {unit}");
        }
        AdminCommand::Assignments => {
            for (login, role, unit, from, until) in db.assignments()? {
                println!(
                    "{login}\t{role}\t{unit}\t{from}..{}",
                    until.map(|u| u.to_string()).unwrap_or_default()
                );
            }
        }
        AdminCommand::EnrollCode { login } => {
            let code = admin_ops::issue_code(&mut db, By::Cli, &login)?;
            println!("{code}");
        }
        AdminCommand::Devices => {
            println!("device\tlogin\tstatus\tlast sync\tpending");
            for d in db.devices()? {
                println!("{}", device_line(&d));
            }
        }
        AdminCommand::Retire { device } => {
            let before = db.retire_device(device)?;
            admin_event("retire", &device.to_string())?;
            println!("{}", device_line(&before));
            println!(
                "device {device} retiring: at its next sync it uploads what it holds, then wipes"
            );
        }
        AdminCommand::Revoke { device, force } => match db.revoke_device_guarded(device, force)? {
            Ok(before) => {
                admin_event("revoke", &device.to_string())?;
                println!("{}", device_line(&before));
                if before.pending.is_none() {
                    println!(
                        "(this phone does not report what it holds: anything it did not upload is lost)"
                    );
                }
                println!("device {device} revoked: it wipes at its next request");
            }
            Err(held) => {
                db.audit(Event {
                    user: None,
                    device: None,
                    action: "revoke",
                    target: Some(&device.to_string()),
                    outcome: "device_has_pending",
                })?;
                println!("{}", device_line(&held.0));
                return Err(format!(
                        "device {device} last reported {} records it has not uploaded: retire it if you have the phone (admin retire), or revoke with --force if it is lost",
                        held.0.pending.unwrap_or_default()
                    )
                    .into());
            }
        },
        AdminCommand::Quarantine(QuarantineCommand::List) => {
            let storage = target.log()?;
            for q in storage.quarantined()? {
                let loads = storage
                    .load_doc(q.doc)?
                    .is_some_and(|bytes| HouseholdDoc::load(&bytes).is_ok());
                println!(
                    "{}\t{}\t{}\t{}",
                    q.doc,
                    q.reason,
                    q.at_ms,
                    if loads { "loads" } else { "does_not_load" }
                );
            }
        }
        AdminCommand::Quarantine(QuarantineCommand::Release { household }) => {
            let storage = target.log()?;
            if !storage.release(household)? {
                return Err(format!("household {household} is not quarantined").into());
            }
            admin_event("quarantine_release", &household.to_string())?;
            println!("household {household} released");
        }
        AdminCommand::Refused(RefusedCommand::Export { grid, to }) => {
            let storage = target.log()?;
            let grids = grid.map(|g| vec![g]);
            let rows = storage.refused(grids.as_deref(), usize::MAX >> 1)?;
            let n = rows.len();
            let views = crate::service::orders::refused_views(storage.as_ref(), rows)?;
            let mut out: Box<dyn std::io::Write> = match &to {
                Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
                None => Box::new(std::io::stdout().lock()),
            };
            for v in &views {
                serde_json::to_writer(&mut out, v)?;
                writeln!(out)?;
            }
            out.flush()?;
            admin_event(
                "refused_export",
                grids.as_ref().map_or("*", |g| g[0].as_str()),
            )?;
            if to.is_some() {
                println!("{n} refused changes exported");
            }
        }
        AdminCommand::Workflow(WorkflowCommand::Show) => {
            match db.agreed_setting_if_any(crate::index::WORKFLOW_SETTING)? {
                Some(json) => println!("{json}"),
                None => println!("(none recorded: the first server to start records its own)"),
            }
        }
        AdminCommand::Workflow(WorkflowCommand::Set { file }) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("reading the workflow file {}: {e}", file.display()))?;
            let workflow: crate::index::Workflow = serde_json::from_str(&text)
                .map_err(|e| format!("the workflow file {} is not valid: {e}", file.display()))?;
            db.set_setting(
                crate::index::WORKFLOW_SETTING,
                &serde_json::to_string(&workflow)?,
            )?;
            admin_event("workflow_set", crate::index::WORKFLOW_SETTING)?;
            println!(
                "workflow settings recorded: start every server with --workflow {}",
                file.display()
            );
        }
        AdminCommand::Audit { after } => {
            for e in db.audit_log(after, 10_000)? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    e.seq,
                    e.at_ms,
                    e.user.unwrap_or_default(),
                    e.device.unwrap_or_default(),
                    e.action,
                    e.target.unwrap_or_default(),
                    e.outcome
                );
            }
        }
        AdminCommand::SeedDemo => {
            let demo = seed_demo_on(target)?;
            println!("demo county created (清河县 柳林镇)");
            println!("\nphone enrollment codes (one each, valid 30 days):");
            for (login, grid, code) in &demo.codes {
                println!("  {login:<10} {grid:<14} {code}");
            }
            println!("\nsupervisor logins (POST /v1/login):");
            for (login, role, password) in &demo.passwords {
                println!("  {login:<10} {role:<20} {password}");
            }
        }
        AdminCommand::Backup { .. }
        | AdminCommand::Restore { .. }
        | AdminCommand::Migrate { .. } => {
            unreachable!("handled before the access tables are opened")
        }
    }
    Ok(())
}

/// A device as one line for an admin: id, login, status, last sync (China time), pending.
pub fn device_line(d: &DeviceRow) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        d.device,
        d.login,
        d.status.as_str(),
        d.last_sync_ms
            .map_or_else(|| "never".to_string(), china_time),
        d.pending.map_or_else(|| "?".to_string(), |p| p.to_string()),
    )
}

/// `2027-01-15 08:10 +08`.
fn china_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map(|t| t.to_offset(time::macros::offset!(+8)))
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute] +08"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// What [`seed_demo`] made.
#[derive(Debug, Clone)]
pub struct Demo {
    /// (worker login, grid, enrollment code).
    pub codes: Vec<(String, String, String)>,
    /// (login, role, password) of the supervisors and the admin.
    pub passwords: Vec<(String, String, String)>,
    /// Households created per grid.
    pub households: Vec<(String, HouseholdId)>,
}

/// Creates the demo county in `data_dir`. Fails if it exists already.
pub fn seed_demo(data_dir: &Path) -> Result<Demo, Box<dyn std::error::Error>> {
    seed_demo_on(Target::Embedded(data_dir))
}

/// Creates the demo county in `target`. Fails if it exists already.
pub fn seed_demo_on(target: Target<'_>) -> Result<Demo, Box<dyn std::error::Error>> {
    let db = target.access()?;
    let start = Day::ymd(2026, 1, 1).expect("a date");
    db.add_unit("qinghe", UnitKind::County, None, "清河县", start)?;
    db.add_unit("liulin", UnitKind::Town, Some("qinghe"), "柳林镇", start)?;
    db.add_unit("dongcun", UnitKind::Village, Some("liulin"), "东村", start)?;
    db.add_unit("xicun", UnitKind::Village, Some("liulin"), "西村", start)?;
    let grids = [
        ("dongcun-1", "dongcun", "东村第一网格", "w-wang", "王芳"),
        ("dongcun-2", "dongcun", "东村第二网格", "w-li", "李强"),
        ("xicun-1", "xicun", "西村第一网格", "w-zhao", "赵敏"),
    ];
    let mut demo = Demo {
        codes: vec![],
        passwords: vec![],
        households: vec![],
    };
    let from = day_start_ms(start);
    for (grid, village, name, login, person) in grids {
        db.add_unit(grid, UnitKind::Grid, Some(village), name, start)?;
        let user = db.add_user(login, person)?;
        db.assign(user, grid, Role::GridWorker, from)?;
        demo.codes.push((
            login.to_string(),
            grid.to_string(),
            db.issue_enrollment_code(user)?,
        ));
    }
    // A grid head shares the first grid with its worker.
    let head = db.add_user("w-sun", "孙伟")?;
    db.assign(head, "dongcun-1", Role::GridHead, from)?;
    demo.codes.insert(
        1,
        (
            "w-sun".to_string(),
            "dongcun-1".to_string(),
            db.issue_enrollment_code(head)?,
        ),
    );
    // Teams that handle dispatched work orders.
    db.add_unit("water", UnitKind::Team, Some("qinghe"), "县水利局", start)?;
    db.add_unit(
        "liulin-service",
        UnitKind::Team,
        Some("liulin"),
        "柳林镇便民服务队",
        start,
    )?;
    for (login, person, unit, role) in [
        ("s-chen", "陈书记", "dongcun", Role::VillageSupervisor),
        ("s-liu", "刘镇长", "liulin", Role::TownSupervisor),
        ("cc-zhou", "周主任", "qinghe", Role::CommandCentre),
        ("t-ma", "马科长", "water", Role::TeamMember),
        ("admin", "系统管理员", "qinghe", Role::Admin),
    ] {
        let user = db.add_user(login, person)?;
        db.assign(user, unit, role, from)?;
        let password = demo_password();
        db.set_password(user, &password)?;
        demo.passwords
            .push((login.to_string(), role.as_str().to_string(), password));
    }
    // Households, written as the command centre's import (a server-side author).
    let importer = Author {
        user: db.user_by_login("cc-zhou")?,
        device: DeviceId::new(),
    };
    let surnames = ["张", "王", "李", "赵", "刘", "陈", "杨", "黄"];
    let mut docs = Vec::new();
    for (g, (grid, ..)) in grids.iter().enumerate() {
        for n in 0..8 {
            let id = HouseholdId::new();
            let mut h = Household::new(
                id,
                GridId::new(*grid),
                format!("{} {} 组", grids[g].2, n / 4 + 1),
                format!("{}", 10 + n),
            );
            let head = MemberId::new();
            h.members.insert(
                head,
                Member {
                    id: head,
                    relation: Relation::Head,
                    name: format!(
                        "{}{}",
                        surnames[n % surnames.len()],
                        ["建国", "秀英", "德明", "桂兰"][n % 4]
                    ),
                    id_number: None,
                    birth_date: Day::ymd(1950 + (n as i32) * 5, 3, 1),
                    phone: None,
                    tags: if n % 3 == 0 {
                        vec![TagSpan {
                            group: KeyGroup::ALL[n % KeyGroup::ALL.len()],
                            since: start,
                            until: None,
                        }]
                    } else {
                        vec![]
                    },
                },
            );
            if n % 4 == 1 {
                // A 12345 hotline order, imported, waiting to be dispatched.
                let d = qiaomen_protocol::schema::Demand {
                    id: qiaomen_protocol::ids::DemandId::new(),
                    raised_on_visit: None,
                    raised_by: importer.user,
                    raised_at_ms: now_ms(),
                    category: qiaomen_protocol::schema::NeedCategory::Other,
                    text: ["门前排水沟堵塞,雨天积水", "自来水水压低,二楼无水"][n / 4].into(),
                    urgency: qiaomen_protocol::schema::Urgency::Normal,
                    status: qiaomen_protocol::schema::DemandStatus::Raised,
                    history: vec![],
                    first_responsible: None,
                    source: Some(qiaomen_protocol::schema::DemandSource::Hotline),
                    external_ref: Some(format!("12345-2026-{:04}", g * 8 + n)),
                };
                h.demands.insert(d.id, d);
            }
            let mut doc = HouseholdDoc::create(&h, &importer, now_ms())?;
            docs.push(DocChanges {
                id,
                changes: doc
                    .changes_since(&[])
                    .into_iter()
                    .map(ByteBuf::from)
                    .collect(),
                whole: None,
            });
            demo.households.push((grid.to_string(), id));
        }
    }
    drop(db);
    let upload = Upload {
        principal: None,
        docs,
        packing: None,
    };
    fn ingest(
        storage: impl Storage,
        upload: &Upload,
    ) -> Result<crate::ingest::Outcome, crate::storage::StorageError> {
        Ok(Ingestor::new(storage, Default::default())
            .process_group(&[upload])?
            .remove(0))
    }
    let outcome = match target {
        Target::Embedded(dir) => ingest(SqliteStorage::open(dir)?, &upload)?,
        Target::Postgres(url) => ingest(PgStorage::connect(url, 2)?, &upload)?,
    };
    if !outcome.rejected.is_empty() {
        return Err("the demo households were refused".into());
    }
    Ok(demo)
}

fn demo_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 14];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}
