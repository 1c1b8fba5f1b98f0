//! The server's own vocabularies beside the protocol's ([`qiaomen_protocol::vocab`]): org unit
//! kinds, coverage states, the red/black list's reasons and device states, each a code and a
//! zh-CN label in one table; and [`label`], which the pages and exports read every label
//! through.

use qiaomen_protocol::vocab;

use crate::access::org::UnitKind;

fn unit_kind_label(k: UnitKind) -> &'static str {
    match k {
        UnitKind::County => "县",
        UnitKind::Town => "乡镇",
        UnitKind::Village => "村/社区",
        UnitKind::Grid => "网格",
        UnitKind::Team => "承办单位",
    }
}

/// A household's coverage in a cycle (`coverage::CoverageState`, by the API's names).
const COVERAGE_STATE: &[(&str, &str)] = &[
    ("visited", "已见面"),
    ("not_met", "未见面"),
    ("pending", "待访"),
    ("missed", "漏访"),
];

/// Why a grid is on the black list (`stats::ranking`).
const RANK_REASON: &[(&str, &str)] = &[
    ("score_below_0.80", "得分低于80%"),
    ("missed_households", "有漏访"),
    ("overdue_orders", "有超期工单"),
];

/// A device's state (`access::tokens`).
const DEVICE_STATUS: &[(&str, &str)] = &[
    ("active", "在用"),
    ("retiring", "交接中"),
    ("retired", "已交接"),
    ("revoked", "已挂失"),
];

/// What the audit log records (`access::audit`): its actions as people read them.
const AUDIT_ACTION: &[(&str, &str)] = &[
    ("login", "登录"),
    ("enroll", "手机登记"),
    ("enrollment_code", "生成登记码"),
    ("revoke", "挂失设备"),
    ("retire", "交接设备"),
    ("token_reuse", "令牌被重复使用"),
    ("household_read", "查看住户"),
    ("household_move", "迁移住户"),
    ("read_order", "查看工单"),
    ("push_task_list", "下发周清单"),
    ("task_done", "完成任务"),
    ("add_unit", "新增单位"),
    ("close_unit", "撤销单位"),
    ("add_user", "新增用户"),
    ("set_password", "设置密码"),
    ("assign", "任职"),
    ("unassign", "卸任"),
    ("quarantine_release", "解除隔离"),
];

const TABLES: &[(&str, &[(&str, &str)])] = &[
    ("audit_action", AUDIT_ACTION),
    ("coverage_state", COVERAGE_STATE),
    ("rank_reason", RANK_REASON),
    ("device_status", DEVICE_STATUS),
];

/// The label of `code` in the vocabulary `kind` (the protocol's or the server's).
pub fn label(kind: &str, code: &str) -> Option<&'static str> {
    if kind == "unit_kind" {
        return UnitKind::parse(code).map(unit_kind_label);
    }
    if let Some((_, table)) = TABLES.iter().find(|(k, _)| *k == kind) {
        return table.iter().find(|(c, _)| *c == code).map(|(_, l)| *l);
    }
    vocab::label(kind, code)
}

/// Every `(code, label)` of the vocabulary `kind`, in its order.
pub fn entries(kind: &str) -> Option<Vec<(&'static str, &'static str)>> {
    if kind == "unit_kind" {
        return Some(
            UnitKind::ALL
                .iter()
                .map(|k| (k.as_str(), unit_kind_label(*k)))
                .collect(),
        );
    }
    if let Some((_, table)) = TABLES.iter().find(|(k, _)| *k == kind) {
        return Some(table.to_vec());
    }
    vocab::entries(kind)
}

/// Every vocabulary's name.
pub fn kinds() -> impl Iterator<Item = &'static str> {
    std::iter::once("unit_kind")
        .chain(TABLES.iter().map(|(k, _)| *k))
        .chain(vocab::KINDS.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_chinese_and_every_code_found() {
        for kind in kinds() {
            let entries = entries(kind).unwrap_or_else(|| panic!("{kind}"));
            assert!(!entries.is_empty(), "{kind}");
            for (code, l) in entries {
                assert_eq!(label(kind, code), Some(l), "{kind} {code}");
                assert!(!l.is_ascii(), "{kind} {code}: {l}");
            }
        }
        assert_eq!(label("unit_kind", "grid"), Some("网格"));
        assert_eq!(label("key_group", "elderly_alone"), Some("独居老人"));
        assert_eq!(label("key_group", "nonsense"), None);
        assert_eq!(label("nonsense", "grid"), None);
    }
}
