//! How a record reads to a person, in zh-CN: a field's path by name (`成员 王建国 · 出生日期`,
//! not `members/<uuid>/birth_date`), a visit as the lines a supervisor reads, and what changed
//! in a visit between two versions, line by line. IO-free, so the server's pages and the
//! phone's app say the same thing.
//!
//! Residents' identity numbers never appear here in full: a member's ID number is shown by
//! its last 4 characters, a phone number as `138****5678`.

use crate::{
    ids::{DemandId, MemberId, VisitId},
    schema::{Gps, Household, Visit},
    vocab::Term,
};

/// China Standard Time, to the minute (`2026-12-15 09:30`); empty for a time out of range.
pub fn datetime(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map(|t| t.to_offset(time::macros::offset!(+8)))
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// A GPS fix as a person reads it (`31.23010, 121.47370（±15 米）`).
pub fn gps(g: &Gps) -> String {
    match g.accuracy_m {
        Some(a) => format!("{:.5}, {:.5}（±{a:.0} 米）", g.lat, g.lon),
        None => format!("{:.5}, {:.5}", g.lat, g.lon),
    }
}

/// A member by name (a member the household no longer lists: `已删除的成员`).
fn member_name(h: &Household, id: &str) -> String {
    id.parse::<MemberId>()
        .ok()
        .and_then(|id| h.members.get(&id))
        .map_or_else(|| "已删除的成员".to_string(), |m| m.name.clone())
}

fn visit_name(h: &Household, id: &str) -> String {
    id.parse::<VisitId>()
        .ok()
        .and_then(|id| h.visits.get(&id))
        .map_or_else(|| "走访".to_string(), |v| format!("{} 的走访", v.visit_day))
}

fn demand_name(h: &Household, id: &str) -> String {
    id.parse::<DemandId>()
        .ok()
        .and_then(|id| h.demands.get(&id))
        .map_or_else(
            || "诉求".to_string(),
            |d| {
                let short: String = d.text.chars().take(12).collect();
                let more = if d.text.chars().count() > 12 {
                    "…"
                } else {
                    ""
                };
                format!("诉求「{short}{more}」")
            },
        )
}

fn household_field(f: &str) -> Option<&'static str> {
    Some(match f {
        "schema_version" => "记录格式版本",
        "id" => "户编号",
        "grid" => "网格",
        "address" => "地址",
        "door_number" => "门牌号",
        "gps" => "位置",
        "phone" => "联系电话",
        "status" => "居住状态",
        "tags" => "重点人群",
        "members" => "成员",
        "visits" => "走访",
        "demands" => "诉求",
        "reviews" => "审核",
        _ => return None,
    })
}

fn photo_field(f: &str) -> Option<&'static str> {
    Some(match f {
        "caption" => "说明",
        "taken_at_ms" => "拍摄时间",
        "subject" => "所属记录",
        "by" => "拍摄人",
        _ => return None,
    })
}

fn member_field(f: &str) -> Option<&'static str> {
    Some(match f {
        "id" => "成员编号",
        "relation" => "与户主关系",
        "name" => "姓名",
        "id_number" => "身份证号",
        "birth_date" => "出生日期",
        "phone" => "联系电话",
        "tags" => "重点人群",
        _ => return None,
    })
}

fn visit_field(f: &str) -> Option<&'static str> {
    Some(match f {
        "id" => "走访编号",
        "visit_day" => "走访日",
        "worker" => "网格员",
        "device" => "设备",
        "started_at_ms" => "开始时间",
        "ended_at_ms" => "结束时间",
        "gps" => "位置",
        "outcome" => "走访结果",
        "people_met" => "见到的人",
        "needs" => "需求",
        "disputes" => "矛盾纠纷",
        "hazards" => "安全隐患",
        "publicity" => "宣传",
        "note" => "走访记录",
        "demands_raised" => "提出的诉求",
        _ => return None,
    })
}

fn demand_field(f: &str) -> Option<&'static str> {
    Some(match f {
        "id" => "诉求编号",
        "raised_on_visit" => "所属走访",
        "raised_by" => "提出人",
        "raised_at_ms" => "提出时间",
        "category" => "类别",
        "text" => "内容",
        "urgency" => "紧急程度",
        "status" => "办理状态",
        "history" => "办理记录",
        "first_responsible" => "首问责任人",
        "source" => "来源",
        "external_ref" => "热线工单号",
        _ => return None,
    })
}

fn review_field(f: &str) -> Option<&'static str> {
    Some(match f {
        "id" => "审核编号",
        "visit" => "所审走访",
        "decision" => "结论",
        "comment" => "意见",
        "reviewer" => "审核人",
        "device" => "设备",
        "at_ms" => "时间",
        "heads" => "所审版本",
        _ => return None,
    })
}

/// The parts of a nested value (`gps/lat`, `needs/0/detail`, `history/2/comment`).
fn part(f: &str) -> String {
    if let Ok(i) = f.parse::<usize>() {
        return format!("第{}项", i + 1);
    }
    match f {
        "lat" => "纬度",
        "lon" => "经度",
        "accuracy_m" => "精度",
        "group" | "kind" | "category" => "类别",
        "since" => "起始",
        "until" => "截止",
        "detail" => "内容",
        "by" => "操作人",
        "at_ms" => "时间",
        "from" => "原状态",
        "to" => "新状态",
        "comment" => "说明",
        "action" => "步骤",
        "tier" => "分级",
        "unit" => "承办单位",
        "satisfaction" => "满意度",
        "extend_days" => "延期天数",
        "device" => "设备",
        _ => "其他",
    }
    .to_string()
}

/// A field of the household document by name: `["members", "<uuid>", "birth_date"]` reads
/// `成员 王建国 · 出生日期`; `["visits", "<uuid>", "note"]` reads `2026-12-15 的走访 · 走访记录`.
/// Ids are replaced by what they name in `h` (the current record).
pub fn field_label(path: &[String], h: &Household) -> String {
    let Some(first) = path.first() else {
        return "整条记录".to_string();
    };
    let rest = |from: usize, name: fn(&str) -> Option<&'static str>| -> Vec<String> {
        path.iter()
            .skip(from)
            .enumerate()
            .map(|(i, f)| match (i, name(f)) {
                (0, Some(n)) => n.to_string(),
                _ => part(f),
            })
            .collect()
    };
    let mut parts: Vec<String> = match (first.as_str(), path.get(1)) {
        ("members", Some(id)) => {
            let mut p = vec![format!("成员 {}", member_name(h, id))];
            p.extend(rest(2, member_field));
            p
        }
        ("visits", Some(id)) => {
            let mut p = vec![visit_name(h, id)];
            p.extend(rest(2, visit_field));
            p
        }
        ("demands", Some(id)) => {
            let mut p = vec![demand_name(h, id)];
            p.extend(rest(2, demand_field));
            p
        }
        ("reviews", Some(_)) => {
            let mut p = vec!["审核".to_string()];
            p.extend(rest(2, review_field));
            p
        }
        (key, _) if key.starts_with(crate::photo::ROOT_PREFIX) => {
            let mut p = vec!["照片".to_string()];
            p.extend(rest(1, photo_field));
            p
        }
        _ => rest(0, household_field),
    };
    parts.retain(|p| !p.is_empty());
    parts.join(" · ")
}

/// One line of a visit as a supervisor reads it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Line {
    /// The field's code (`note`, `hazards`): stable, for machines and tests.
    pub field: &'static str,
    /// Its name (`走访记录`).
    pub label: &'static str,
    /// What it holds, in words (`消防隐患：楼道堆放杂物`); empty when nothing was recorded.
    pub text: String,
}

fn items<'a>(parts: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    parts
        .map(|(kind, detail)| {
            if detail.trim().is_empty() {
                kind.to_string()
            } else {
                format!("{kind}：{detail}")
            }
        })
        .collect::<Vec<_>>()
        .join("；")
}

/// Every line of a visit, in the order a supervisor reads them (who, which phone and the
/// worker are shown beside, by the caller: they name staff, not what was recorded).
pub fn visit_lines(v: &Visit, h: &Household) -> Vec<Line> {
    let line = |field: &'static str, text: String| Line {
        field,
        label: visit_field(field).unwrap_or(field),
        text,
    };
    vec![
        line("visit_day", v.visit_day.to_string()),
        line("outcome", v.outcome.label().to_string()),
        line("started_at_ms", datetime(v.started_at_ms)),
        line(
            "ended_at_ms",
            v.ended_at_ms.map(datetime).unwrap_or_default(),
        ),
        line("gps", v.gps.as_ref().map(gps).unwrap_or_default()),
        line(
            "people_met",
            v.people_met
                .iter()
                .map(|m| member_name(h, &m.to_string()))
                .collect::<Vec<_>>()
                .join("、"),
        ),
        line(
            "needs",
            items(
                v.needs
                    .iter()
                    .map(|n| (n.category.label(), n.detail.as_str())),
            ),
        ),
        line(
            "disputes",
            items(
                v.disputes
                    .iter()
                    .map(|d| (d.kind.label(), d.detail.as_str())),
            ),
        ),
        line(
            "hazards",
            items(
                v.hazards
                    .iter()
                    .map(|d| (d.kind.label(), d.detail.as_str())),
            ),
        ),
        line(
            "publicity",
            v.publicity
                .iter()
                .map(|p| p.label())
                .collect::<Vec<_>>()
                .join("、"),
        ),
        line("note", v.note.as_str().to_string()),
        line(
            "demands_raised",
            v.demands_raised
                .iter()
                .map(|d| demand_name(h, &d.to_string()))
                .collect::<Vec<_>>()
                .join("、"),
        ),
    ]
}

/// A line of a visit that differs between two versions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub field: &'static str,
    pub label: &'static str,
    pub before: String,
    pub after: String,
}

/// What changed in a visit from `then` (the version a review signed) to `now`, line by
/// line; every line when the visit is new, `after` empty on every line when it was removed.
pub fn visit_changes(
    then: Option<(&Visit, &Household)>,
    now: Option<(&Visit, &Household)>,
) -> Vec<Change> {
    let before = then.map(|(v, h)| visit_lines(v, h)).unwrap_or_default();
    let after = now.map(|(v, h)| visit_lines(v, h)).unwrap_or_default();
    let text = |lines: &[Line], field: &str| {
        lines
            .iter()
            .find(|l| l.field == field)
            .map(|l| l.text.clone())
            .unwrap_or_default()
    };
    let fields: Vec<(&'static str, &'static str)> = before
        .iter()
        .chain(after.iter())
        .map(|l| (l.field, l.label))
        .fold(Vec::new(), |mut acc, f| {
            if !acc.contains(&f) {
                acc.push(f);
            }
            acc
        });
    fields
        .into_iter()
        .filter_map(|(field, label)| {
            let (b, a) = (text(&before, field), text(&after, field));
            (b != a).then_some(Change {
                field,
                label,
                before: b,
                after: a,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        calendar::Day,
        ids::{DeviceId, GridId, HouseholdId, UserId},
        schema::{Hazard, HazardKind, Member, Need, NeedCategory, Relation, VisitOutcome},
    };

    fn record() -> (Household, Visit) {
        let mut h = Household::new(HouseholdId::new(), GridId::new("g1"), "东村", "17号");
        let m = Member {
            id: MemberId::new(),
            relation: Relation::Head,
            name: "王建国".into(),
            id_number: None,
            birth_date: None,
            phone: None,
            tags: vec![],
        };
        let mid = m.id;
        h.members.insert(m.id, m);
        let v = Visit {
            id: VisitId::new(),
            visit_day: Day::ymd(2026, 12, 15).unwrap(),
            worker: UserId::new(),
            device: DeviceId::new(),
            started_at_ms: 1_797_300_000_000,
            ended_at_ms: None,
            gps: Some(Gps {
                lat: 31.2301,
                lon: 121.4737,
                accuracy_m: Some(15.0),
            }),
            outcome: VisitOutcome::Met,
            people_met: vec![mid],
            needs: vec![Need {
                category: NeedCategory::HealthCare,
                detail: "需要降压药".into(),
            }],
            disputes: vec![],
            hazards: vec![Hazard {
                kind: HazardKind::Fire,
                detail: "楼道堆放杂物".into(),
            }],
            publicity: vec![crate::schema::Publicity::AntiFraud],
            note: "老人独居，身体尚可".into(),
            demands_raised: vec![],
        };
        h.visits.insert(v.id, v.clone());
        (h, v)
    }

    #[test]
    fn a_path_reads_by_name() {
        let (h, v) = record();
        let m = *h.members.keys().next().unwrap();
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            field_label(&path(&["members", &m.to_string(), "birth_date"]), &h),
            "成员 王建国 · 出生日期"
        );
        assert_eq!(
            field_label(
                &path(&["visits", &v.id.to_string(), "hazards", "0", "detail"]),
                &h
            ),
            "2026-12-15 的走访 · 安全隐患 · 第1项 · 内容"
        );
        assert_eq!(field_label(&path(&["gps", "lat"]), &h), "位置 · 纬度");
        assert_eq!(
            field_label(
                &path(&["members", &MemberId::new().to_string(), "name"]),
                &h
            ),
            "成员 已删除的成员 · 姓名"
        );
        for p in [
            path(&["members", &m.to_string(), "birth_date"]),
            path(&["visits", &v.id.to_string(), "note"]),
        ] {
            let l = field_label(&p, &h);
            assert!(!l.contains(&p[1]), "no id in {l}");
        }
    }

    #[test]
    fn a_visit_reads_in_words_and_a_fix_shows_line_by_line() {
        let (h, v) = record();
        let lines = visit_lines(&v, &h);
        let text = |f: &str| lines.iter().find(|l| l.field == f).unwrap().text.clone();
        assert_eq!(text("outcome"), "见到住户");
        assert_eq!(text("people_met"), "王建国");
        assert_eq!(text("needs"), "医疗：需要降压药");
        assert_eq!(text("hazards"), "消防隐患：楼道堆放杂物");
        assert_eq!(text("publicity"), "防范电信诈骗");
        assert_eq!(text("note"), "老人独居，身体尚可");
        assert_eq!(text("gps"), "31.23010, 121.47370（±15 米）");
        assert_eq!(text("started_at_ms"), datetime(v.started_at_ms));

        let mut fixed = v.clone();
        fixed.note = "老人独居，身体尚可；已补充用药情况".into();
        fixed.hazards.clear();
        let changes = visit_changes(Some((&v, &h)), Some((&fixed, &h)));
        assert_eq!(
            changes.iter().map(|c| c.field).collect::<Vec<_>>(),
            ["hazards", "note"]
        );
        assert_eq!(changes[0].before, "消防隐患：楼道堆放杂物");
        assert_eq!(changes[0].after, "");
        assert!(visit_changes(Some((&v, &h)), Some((&v, &h))).is_empty());
        // A visit new since the version signed: every line that holds something.
        assert!(visit_changes(None, Some((&v, &h))).len() >= 8);
    }
}
