//! The 12345 hotline import, without IO: a file's bytes in, its rows out, each row either an
//! order ready to be checked against the records or the list of what is wrong with its cells.
//! The HTTP edge (`http/import.rs`) does the rest: whether the number was imported before,
//! whether grid + door number name one household of the caller's, and the writing.
//!
//! 1. **Formats** ([`Format::detect`]): XLSX (its content type, or a zip file's first bytes
//!    `PK\x03\x04`; the first sheet is read), CSV (`text/csv`) and JSON (an array of
//!    [`HotlineOrder`]). A CSV file is UTF-8, with or without a byte-order mark, or, when it
//!    is not valid UTF-8, GB18030 (which includes GBK: what Excel and the hotline system save).
//! 2. **Headers** ([`Column::of_header`]): English (`ref,grid,door_number,category,text,urgent`)
//!    or Chinese (工单编号, 网格, 门牌号, 类别, 诉求内容, 紧急, and the variants listed there), in
//!    any order; other columns are ignored. A missing required column, a column given twice, an
//!    empty file, an unreadable one or more than [`MAX_ROWS`] rows fail the whole file
//!    ([`FileError`]); nothing else does.
//! 3. **Cells**: every bad cell is a [`CellError`] of its row, with a stable code and a reason in
//!    Chinese that names the column; the other rows are unaffected. Rows whose cells are all
//!    empty are skipped (spreadsheets keep them), but still counted, so row numbers are those of
//!    the file: row 1 is the first line after the header.
//!
//! No value of a cell is ever put in an error or a `Debug` output: cells hold residents'
//! requests and addresses.

use std::fmt;

use qiaomen_protocol::{
    schema::NeedCategory,
    validate::{MAX_DOOR_NUMBER_CHARS, MAX_TEXT_CHARS},
    vocab::Term,
};
use serde::{Deserialize, Serialize};

/// Most data rows in one import.
pub const MAX_ROWS: usize = 1000;
/// Longest hotline number, in characters.
pub const MAX_REF_CHARS: usize = 64;
/// Longest grid id, in characters.
pub const MAX_GRID_CHARS: usize = 64;

/// The content type of an XLSX file.
pub const XLSX_CONTENT_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// A demand's category from an import cell: its code (`housing`), the first release's name
/// (`Housing`, any case) or its label (住房) — the vocabulary's (`qiaomen_protocol::vocab`).
pub fn category(s: &str) -> Option<NeedCategory> {
    let s = s.trim();
    NeedCategory::from_text(s).or_else(|| {
        <NeedCategory as Term>::ALL
            .iter()
            .copied()
            .find(|c| c.code().replace('_', "").eq_ignore_ascii_case(s))
    })
}

/// `urgent` from an import cell: empty is not urgent.
fn urgent(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "false" | "0" | "否" | "一般" | "不紧急" => Some(false),
        "true" | "1" | "是" | "紧急" => Some(true),
        _ => None,
    }
}

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Csv,
    Xlsx,
    Json,
}

impl Format {
    /// The format of a body from its content type and first bytes: JSON by its content type,
    /// XLSX by its content type or the zip signature, CSV by `text/csv`; else `None`.
    pub fn detect(content_type: &str, bytes: &[u8]) -> Option<Format> {
        let ct = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ct == "application/json" {
            Some(Format::Json)
        } else if ct == XLSX_CONTENT_TYPE || bytes.starts_with(ZIP_MAGIC) {
            Some(Format::Xlsx)
        } else if ct == "text/csv" {
            Some(Format::Csv)
        } else {
            None
        }
    }
}

/// A column of the import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Column {
    #[serde(rename = "ref")]
    Ref,
    Grid,
    DoorNumber,
    Category,
    Text,
    Urgent,
}

impl Column {
    const ALL: [Column; 6] = [
        Column::Ref,
        Column::Grid,
        Column::DoorNumber,
        Column::Category,
        Column::Text,
        Column::Urgent,
    ];

    /// The names a header cell may give this column (compared without spaces, ASCII in any
    /// case).
    fn names(self) -> &'static [&'static str] {
        match self {
            Column::Ref => &["ref", "工单编号", "工单号", "热线工单号", "12345工单号"],
            Column::Grid => &["grid", "网格", "网格编号", "所属网格"],
            Column::DoorNumber => &["door_number", "门牌号", "门牌"],
            Column::Category => &["category", "类别", "诉求类别", "诉求分类"],
            Column::Text => &["text", "诉求内容", "内容", "工单内容"],
            Column::Urgent => &["urgent", "紧急", "是否紧急", "紧急程度"],
        }
    }

    /// The column a header cell names, if any.
    pub fn of_header(cell: &str) -> Option<Column> {
        let name: String = cell
            .trim_start_matches('\u{feff}')
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        Column::ALL
            .into_iter()
            .find(|c| c.names().contains(&name.as_str()))
    }

    /// Whether a file must have this column (`urgent` may be left out: not urgent).
    fn required(self) -> bool {
        self != Column::Urgent
    }

    /// Its name for people.
    pub fn label_zh(self) -> &'static str {
        match self {
            Column::Ref => "工单编号",
            Column::Grid => "网格",
            Column::DoorNumber => "门牌号",
            Column::Category => "类别",
            Column::Text => "诉求内容",
            Column::Urgent => "紧急",
        }
    }

    /// The longest cell of a free-text column (the others take a word of a list).
    fn max_chars(self) -> Option<usize> {
        match self {
            Column::Ref => Some(MAX_REF_CHARS),
            Column::Grid => Some(MAX_GRID_CHARS),
            Column::DoorNumber => Some(MAX_DOOR_NUMBER_CHARS),
            Column::Text => Some(MAX_TEXT_CHARS),
            Column::Category | Column::Urgent => None,
        }
    }
}

/// Why a row is not imported: a bad cell, or (from the HTTP edge) what the records say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RowErrorCode {
    /// A required cell is empty.
    Empty,
    /// A cell is longer than its column allows.
    TooLong,
    /// The category is none of the known codes or labels.
    UnknownCategory,
    /// `urgent` is none of the accepted words.
    InvalidUrgent,
    /// A spreadsheet cell holds an error value (`#N/A`, ...).
    InvalidCell,
    /// The hotline number is on an earlier row of the same file.
    DuplicateRef,
    /// No single household of the caller's grids has this grid and door number.
    NoHousehold,
    /// The caller may not add demands to this household.
    NotAllowed,
}

/// A problem with one cell of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellError {
    pub column: Column,
    pub code: RowErrorCode,
    /// For `duplicate_ref`: the earlier row.
    pub other_row: Option<usize>,
}

impl CellError {
    fn new(column: Column, code: RowErrorCode) -> Self {
        CellError {
            column,
            code,
            other_row: None,
        }
    }

    /// The reason, for people, naming the column and never quoting the cell.
    pub fn reason_zh(&self) -> String {
        self.code.reason_zh(Some(self.column), self.other_row)
    }
}

impl RowErrorCode {
    /// The reason, for people, naming the column (when one is at fault) and, for
    /// `duplicate_ref`, the earlier row.
    pub fn reason_zh(self, column: Option<Column>, other_row: Option<usize>) -> String {
        let col = column.map_or("", Column::label_zh);
        match self {
            RowErrorCode::Empty => format!("“{col}”不能为空"),
            RowErrorCode::TooLong => match column.and_then(Column::max_chars) {
                Some(n) => format!("“{col}”太长（最多 {n} 个字）"),
                None => format!("“{col}”太长"),
            },
            RowErrorCode::UnknownCategory => {
                format!("“{col}”应为 住房、医疗、教育、养老 或 其他")
            }
            RowErrorCode::InvalidUrgent => {
                format!("“{col}”应为 是/否、紧急/一般、true/false、1/0，或留空")
            }
            RowErrorCode::InvalidCell => format!("“{col}”单元格的值无法读取（公式错误？）"),
            RowErrorCode::DuplicateRef => match other_row {
                Some(r) => format!("“{col}”与第 {r} 行重复"),
                None => format!("“{col}”在文件中重复"),
            },
            RowErrorCode::NoHousehold => {
                "该网格没有唯一使用这个门牌号的住户，或不在您的辖区内".to_string()
            }
            RowErrorCode::NotAllowed => "您无权为这个网格的住户导入工单".to_string(),
        }
    }
}

/// What fails a whole file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty")]
    Empty,
    #[error("required columns are missing")]
    MissingColumns(Vec<Column>),
    #[error("a column is given twice")]
    DuplicateColumn(Column),
    #[error("more rows than an import takes")]
    TooManyRows,
    #[error("the CSV is neither UTF-8 nor GB18030")]
    Encoding,
    #[error("the XLSX file cannot be read")]
    Xlsx,
    #[error("the body is not a JSON array of hotline orders")]
    Json,
}

impl FileError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            FileError::Empty => "empty_file",
            FileError::MissingColumns(_) => "missing_columns",
            FileError::DuplicateColumn(_) => "duplicate_column",
            FileError::TooManyRows => "too_many_rows",
            FileError::Encoding => "unknown_encoding",
            FileError::Xlsx => "unreadable_xlsx",
            FileError::Json => "malformed",
        }
    }

    /// For people.
    pub fn reason_zh(&self) -> String {
        match self {
            FileError::Empty => "文件是空的，或只有表头".into(),
            FileError::MissingColumns(cols) => format!(
                "缺少必需的列：{}（表头可用中文或英文，顺序不限）",
                cols.iter()
                    .map(|c| c.label_zh())
                    .collect::<Vec<_>>()
                    .join("、")
            ),
            FileError::DuplicateColumn(c) => format!("“{}”列出现了不止一次", c.label_zh()),
            FileError::TooManyRows => format!("一次最多导入 {MAX_ROWS} 行，请分成几个文件"),
            FileError::Encoding => {
                "无法识别文件的编码，请另存为 CSV（UTF-8 或 GBK）或 Excel（.xlsx）".into()
            }
            FileError::Xlsx => "无法读取这个 Excel 文件，请另存为 .xlsx 或 CSV 后再试".into(),
            FileError::Json => "内容不是热线工单的 JSON 数组".into(),
        }
    }
}

/// One 12345 hotline work order to import, as JSON.
#[derive(Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HotlineOrder {
    /// The hotline's work-order number (imports are idempotent by it).
    #[serde(rename = "ref")]
    pub reference: String,
    pub grid: String,
    pub door_number: String,
    /// A category code (`Housing`, ...) or its Chinese label (住房, 医疗, 教育, 养老, 其他).
    pub category: String,
    pub text: String,
    #[serde(default)]
    pub urgent: bool,
}

impl fmt::Debug for HotlineOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotlineOrder")
            .field("ref", &self.reference)
            .field("grid", &self.grid)
            .finish_non_exhaustive()
    }
}

/// A row's cells as the file gave them (trimmed), in column order; `None` when the file has
/// no such column or cell.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Cells(pub [Option<String>; 6]);

impl Cells {
    /// The cell of `column`, trimmed, `""` when absent.
    pub fn get(&self, column: Column) -> &str {
        self.0[column as usize].as_deref().unwrap_or("")
    }

    fn is_blank(&self) -> bool {
        self.0.iter().flatten().all(|s| s.is_empty())
    }
}

impl fmt::Debug for Cells {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The number only: the rest is personal.
        f.debug_struct("Cells")
            .field("ref", &self.get(Column::Ref))
            .finish_non_exhaustive()
    }
}

/// A row that passed the cell checks.
#[derive(Clone, PartialEq, Eq)]
pub struct Order {
    pub reference: String,
    pub grid: String,
    pub door_number: String,
    pub category: NeedCategory,
    pub text: String,
    pub urgent: bool,
}

impl fmt::Debug for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Order")
            .field("ref", &self.reference)
            .field("grid", &self.grid)
            .field("category", &self.category)
            .field("urgent", &self.urgent)
            .finish_non_exhaustive()
    }
}

/// One data row of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// 1-based, counted from the first row after the header (JSON: the array's index + 1).
    pub row: usize,
    pub cells: Cells,
    /// The order, or every problem of its cells.
    pub order: Result<Order, Vec<CellError>>,
}

/// Reads a file into its rows.
pub fn parse(format: Format, bytes: &[u8]) -> Result<Vec<Row>, FileError> {
    let rows = match format {
        Format::Json => {
            let orders: Vec<HotlineOrder> =
                serde_json::from_slice(bytes).map_err(|_| FileError::Json)?;
            if orders.len() > MAX_ROWS {
                return Err(FileError::TooManyRows);
            }
            orders
                .into_iter()
                .enumerate()
                .map(|(i, o)| {
                    let urgent = if o.urgent { "true" } else { "false" };
                    let cells = Cells(
                        [
                            o.reference,
                            o.grid,
                            o.door_number,
                            o.category,
                            o.text,
                            urgent.into(),
                        ]
                        .map(|s| Some(s.trim().to_string())),
                    );
                    (i + 1, cells, Vec::new())
                })
                .collect()
        }
        Format::Csv => table(csv_records(&decode(bytes)?))?,
        Format::Xlsx => table(xlsx_records(bytes)?)?,
    };
    Ok(check_rows(rows))
}

/// A CSV file's text: UTF-8 (a byte-order mark dropped), else GB18030.
pub fn decode(bytes: &[u8]) -> Result<String, FileError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Ok(s.to_string());
    }
    let (text, had_errors) = encoding_rs::GB18030.decode_without_bom_handling(bytes);
    if had_errors {
        return Err(FileError::Encoding);
    }
    Ok(text.into_owned())
}

/// A spreadsheet cell, read as text, or an error value.
type Cell = Result<String, ()>;
/// A record of a table: its index in the file (0-based) and its cells.
type Record = (usize, Vec<Cell>);

fn csv_records(text: &str) -> Vec<Record> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    // The text is valid UTF-8 and the reader flexible: a record cannot fail but by IO,
    // which a slice has none of; the limit bounds the work on an oversized file.
    reader
        .records()
        .map_while(Result::ok)
        .take(MAX_ROWS + 2)
        .map(|r| r.iter().map(|c| Ok(c.to_string())).collect())
        .enumerate()
        .collect()
}

/// Most bytes an XLSX file may unzip to (its declared sizes, which the zip reader holds it
/// to): 1000 rows of the longest requests fit many times over.
pub const MAX_XLSX_UNZIPPED: u128 = 64 * 1024 * 1024;
/// Columns of a sheet that are read (the others are ignored).
pub const MAX_COLUMNS: u32 = 64;

fn xlsx_records(bytes: &[u8]) -> Result<Vec<Record>, FileError> {
    use calamine::{DataRef, Reader, Xlsx};
    // A small file may unzip to gigabytes: look at the sizes before anything is unzipped.
    let archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|_| FileError::Xlsx)?;
    if archive
        .decompressed_size()
        .is_none_or(|n| n > MAX_XLSX_UNZIPPED)
    {
        return Err(FileError::Xlsx);
    }
    let mut book: Xlsx<_> = Xlsx::new(std::io::Cursor::new(bytes)).map_err(|_| FileError::Xlsx)?;
    let first = book
        .sheet_names()
        .first()
        .cloned()
        .ok_or(FileError::Empty)?;
    // Cell by cell, not as a range: a sheet that names cell XFD1048576 would be a range of
    // billions of cells.
    let mut cells = book
        .worksheet_cells_reader(&first)
        .map_err(|_| FileError::Xlsx)?;
    let mut rows: std::collections::BTreeMap<u32, Vec<Cell>> = Default::default();
    while let Some(cell) = cells.next_cell().map_err(|_| FileError::Xlsx)? {
        let (r, c) = cell.get_position();
        let value = match cell.get_value() {
            DataRef::Empty => continue,
            DataRef::String(s) | DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => Ok(s.clone()),
            DataRef::SharedString(s) => Ok(s.to_string()),
            DataRef::Int(i) => Ok(i.to_string()),
            // A number typed into a cell (a door number 12, a hotline number): as written,
            // without a trailing ".0".
            DataRef::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => Ok(format!("{}", *f as i64)),
            DataRef::Float(f) => Ok(f.to_string()),
            DataRef::Bool(b) => Ok(b.to_string()),
            DataRef::DateTime(d) => Ok(d.as_f64().to_string()),
            DataRef::Error(_) => Err(()),
        };
        if c >= MAX_COLUMNS {
            continue;
        }
        if !rows.contains_key(&r) && rows.len() > MAX_ROWS + 1 {
            // The header and more rows than an import takes: enough to say so.
            break;
        }
        let row = rows.entry(r).or_default();
        if row.len() <= c as usize {
            row.resize(c as usize + 1, Ok(String::new()));
        }
        row[c as usize] = value;
    }
    Ok(rows
        .into_iter()
        .map(|(r, cells)| (r as usize, cells))
        .collect())
}

/// A table's first non-blank record as the header, the records after it as rows, numbered
/// from the header (the first record after it is row 1).
fn table(records: Vec<Record>) -> Result<Vec<(usize, Cells, Vec<CellError>)>, FileError> {
    let blank = |r: &Record| {
        r.1.iter()
            .all(|c| c.as_ref().is_ok_and(|s| s.trim().is_empty()))
    };
    let mut records = records.into_iter().skip_while(blank);
    let (header_at, header) = records.next().ok_or(FileError::Empty)?;
    let mut at: [Option<usize>; 6] = [None; 6];
    for (i, cell) in header.iter().enumerate() {
        let Some(col) = cell.as_deref().ok().and_then(Column::of_header) else {
            continue;
        };
        if at[col as usize].replace(i).is_some() {
            return Err(FileError::DuplicateColumn(col));
        }
    }
    let missing: Vec<Column> = Column::ALL
        .into_iter()
        .filter(|c| c.required() && at[*c as usize].is_none())
        .collect();
    if !missing.is_empty() {
        return Err(FileError::MissingColumns(missing));
    }
    let mut rows = Vec::new();
    for (index, record) in records {
        let mut bad = Vec::new();
        let cells = Cells(Column::ALL.map(|col| {
            let cell = record.get(at[col as usize]?)?;
            match cell {
                Ok(s) => Some(s.trim().to_string()),
                Err(()) => {
                    bad.push(CellError::new(col, RowErrorCode::InvalidCell));
                    Some(String::new())
                }
            }
        }));
        if bad.is_empty() && cells.is_blank() {
            continue;
        }
        if rows.len() == MAX_ROWS {
            return Err(FileError::TooManyRows);
        }
        rows.push((index - header_at, cells, bad));
    }
    if rows.is_empty() {
        return Err(FileError::Empty);
    }
    Ok(rows)
}

/// Checks each row's cells; a hotline number already on an earlier row is `duplicate_ref`.
fn check_rows(rows: Vec<(usize, Cells, Vec<CellError>)>) -> Vec<Row> {
    let mut seen = std::collections::HashMap::new();
    rows.into_iter()
        .map(|(row, cells, mut errors)| {
            let order = check(&cells, &mut errors);
            let reference = cells.get(Column::Ref);
            if !reference.is_empty() {
                if let Some(&first) = seen.get(reference) {
                    errors.push(CellError {
                        other_row: Some(first),
                        ..CellError::new(Column::Ref, RowErrorCode::DuplicateRef)
                    });
                } else {
                    seen.insert(reference.to_string(), row);
                }
            }
            let order = match order {
                Some(o) if errors.is_empty() => Ok(o),
                _ => Err(errors),
            };
            Row { row, cells, order }
        })
        .collect()
}

/// The order of a row's cells, or `None` with its problems added to `errors`.
fn check(cells: &Cells, errors: &mut Vec<CellError>) -> Option<Order> {
    let before = errors.len();
    let mut text_of = |col: Column| -> String {
        let s = cells.get(col);
        if col.required() && s.is_empty() {
            errors.push(CellError::new(col, RowErrorCode::Empty));
        } else if col.max_chars().is_some_and(|n| s.chars().count() > n) {
            errors.push(CellError::new(col, RowErrorCode::TooLong));
        }
        s.to_string()
    };
    let reference = text_of(Column::Ref);
    let grid = text_of(Column::Grid);
    let door_number = text_of(Column::DoorNumber);
    let category_cell = text_of(Column::Category);
    let text = text_of(Column::Text);
    let urgent_cell = text_of(Column::Urgent);
    let category = category(&category_cell);
    if category.is_none() && !category_cell.is_empty() {
        errors.push(CellError::new(
            Column::Category,
            RowErrorCode::UnknownCategory,
        ));
    }
    let urgent = urgent(&urgent_cell);
    if urgent.is_none() {
        errors.push(CellError::new(Column::Urgent, RowErrorCode::InvalidUrgent));
    }
    if errors.len() > before {
        return None;
    }
    Some(Order {
        reference,
        grid,
        door_number,
        category: category?,
        text,
        urgent: urgent?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "ref,grid,door_number,category,text,urgent\n";

    fn csv(body: &str) -> Vec<Row> {
        parse(Format::Csv, body.as_bytes()).unwrap()
    }

    fn codes(row: &Row) -> Vec<(Column, RowErrorCode)> {
        row.order
            .as_ref()
            .err()
            .map(|e| e.iter().map(|e| (e.column, e.code)).collect())
            .unwrap_or_default()
    }

    fn gbk(s: &str) -> Vec<u8> {
        let (bytes, _, unmappable) = encoding_rs::GBK.encode(s);
        assert!(!unmappable);
        bytes.into_owned()
    }

    #[test]
    fn a_good_english_csv_row_becomes_an_order() {
        let rows = csv(&format!("{HEADER}12345-001,g1,12,住房,房屋漏雨,true\n"));
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].order,
            Ok(Order {
                reference: "12345-001".into(),
                grid: "g1".into(),
                door_number: "12".into(),
                category: NeedCategory::Housing,
                text: "房屋漏雨".into(),
                urgent: true,
            })
        );
        assert_eq!(rows[0].row, 1);
    }

    #[test]
    fn a_gbk_csv_with_chinese_headers_in_another_order_is_read() {
        let text = "诉求内容,工单号,备注,是否紧急,门牌号,网格编号,诉求类别\r\n\
                    房屋漏雨,A-1,随便写,是,12,g1,住房\r\n\
                    孩子入学,A-2,,一般,13,g1,Education\r\n";
        let bytes = gbk(text);
        assert!(std::str::from_utf8(&bytes).is_err(), "really GBK");
        let rows = parse(Format::Csv, &bytes).unwrap();
        let orders: Vec<&Order> = rows.iter().map(|r| r.order.as_ref().unwrap()).collect();
        assert_eq!(
            (
                orders[0].reference.as_str(),
                orders[0].text.as_str(),
                orders[0].urgent,
                orders[0].category
            ),
            ("A-1", "房屋漏雨", true, NeedCategory::Housing)
        );
        assert_eq!(
            (orders[1].door_number.as_str(), orders[1].urgent),
            ("13", false)
        );
    }

    #[test]
    fn a_utf8_bom_is_dropped_before_the_header() {
        let rows = parse(
            Format::Csv,
            format!("\u{feff}{HEADER}r1,g1,12,其他,路灯不亮,\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(rows[0].order.as_ref().unwrap().reference, "r1");
        // GB18030 text with a Chinese header works too (four-byte sequences included).
        let (bytes, _, _) =
            encoding_rs::GB18030.encode("工单编号,网格,门牌号,类别,内容\nr2,g1,12,养老,𠀀字\n");
        let rows = parse(Format::Csv, &bytes).unwrap();
        assert_eq!(rows[0].order.as_ref().unwrap().text, "𠀀字");
    }

    #[test]
    fn each_bad_cell_is_an_error_of_its_row_naming_the_column() {
        let long_text = "字".repeat(MAX_TEXT_CHARS + 1);
        let long_ref = "1".repeat(MAX_REF_CHARS + 1);
        let rows = csv(&format!(
            "{HEADER}\
             r1,g1,12,住房,好的,\n\
             ,g1,12,住房,没有编号,false\n\
             r3,,,住房,没有网格和门牌,false\n\
             r4,g1,12,Flying,未知类别,false\n\
             r5,g1,12,住房,紧急写错,maybe\n\
             r6,g1,12,住房,{long_text},1\n\
             {long_ref},g1,12,住房,编号太长,0\n\
             r1,g1,13,医疗,编号重复,否\n\
             r9,g1,12,住房,,紧急\n\
             r10,g1\n"
        ));
        use Column::*;
        use RowErrorCode::*;
        let got: Vec<_> = rows.iter().map(|r| (r.row, codes(r))).collect();
        assert_eq!(
            got,
            vec![
                (1, vec![]),
                (2, vec![(Ref, Empty)]),
                (3, vec![(Grid, Empty), (DoorNumber, Empty)]),
                (4, vec![(Category, UnknownCategory)]),
                (5, vec![(Urgent, InvalidUrgent)]),
                (6, vec![(Text, TooLong)]),
                (7, vec![(Ref, TooLong)]),
                (8, vec![(Ref, DuplicateRef)]),
                (9, vec![(Text, Empty)]),
                (
                    10,
                    vec![(DoorNumber, Empty), (Category, Empty), (Text, Empty)]
                ),
            ]
        );
        let dup = &rows[7].order.as_ref().unwrap_err()[0];
        assert_eq!(dup.reason_zh(), "“工单编号”与第 1 行重复");
        assert!(
            rows[4].order.as_ref().unwrap_err()[0]
                .reason_zh()
                .contains("紧急")
        );
        // A reason never quotes the cell.
        assert!(
            !rows[3].order.as_ref().unwrap_err()[0]
                .reason_zh()
                .contains("Flying")
        );
        assert_eq!(
            serde_json::to_value(RowErrorCode::UnknownCategory).unwrap(),
            "unknown_category"
        );
        assert_eq!(serde_json::to_value(Column::Ref).unwrap(), "ref");
    }

    #[test]
    fn urgent_and_category_accept_the_documented_words() {
        for (cell, want) in [
            ("", false),
            ("true", true),
            ("FALSE", false),
            ("1", true),
            ("0", false),
            ("是", true),
            ("否", false),
            ("紧急", true),
            ("一般", false),
        ] {
            assert_eq!(urgent(cell), Some(want), "{cell}");
        }
        assert_eq!(urgent("是的"), None);
        for (cell, want) in [
            ("住房", NeedCategory::Housing),
            ("医疗", NeedCategory::HealthCare),
            ("教育", NeedCategory::Education),
            ("养老", NeedCategory::ElderlyCare),
            ("其他", NeedCategory::Other),
            ("ElderlyCare", NeedCategory::ElderlyCare),
            ("healthcare", NeedCategory::HealthCare),
        ] {
            assert_eq!(category(cell), Some(want), "{cell}");
        }
        assert_eq!(category("交通"), None);
    }

    #[test]
    fn what_fails_a_whole_file() {
        let err = |format, bytes: &[u8]| parse(format, bytes).unwrap_err();
        assert_eq!(
            err(Format::Csv, b"ref,grid\n1,g1\n"),
            FileError::MissingColumns(vec![Column::DoorNumber, Column::Category, Column::Text])
        );
        assert_eq!(
            err(
                Format::Csv,
                "ref,工单号,grid,door_number,category,text\n".as_bytes()
            ),
            FileError::DuplicateColumn(Column::Ref)
        );
        assert_eq!(err(Format::Csv, b""), FileError::Empty);
        assert_eq!(err(Format::Csv, HEADER.as_bytes()), FileError::Empty);
        assert_eq!(err(Format::Csv, b"\xff\xff\xff"), FileError::Encoding);
        assert_eq!(err(Format::Xlsx, b"PK\x03\x04junk"), FileError::Xlsx);
        assert_eq!(err(Format::Json, b"{\"ref\": 1}"), FileError::Json);
        let many: String = std::iter::once(HEADER.to_string())
            .chain((0..=MAX_ROWS).map(|i| format!("r{i},g1,12,住房,漏雨,\n")))
            .collect();
        assert_eq!(err(Format::Csv, many.as_bytes()), FileError::TooManyRows);
        let fits: String = std::iter::once(HEADER.to_string())
            .chain((0..MAX_ROWS).map(|i| format!("r{i},g1,12,住房,漏雨,\n")))
            .chain(std::iter::once(",,,,,\n".to_string()))
            .collect();
        assert_eq!(csv(&fits).len(), MAX_ROWS);
        assert!(
            FileError::MissingColumns(vec![Column::Text])
                .reason_zh()
                .contains("诉求内容")
        );
    }

    #[test]
    fn blank_rows_are_skipped_but_counted() {
        let rows = csv(&format!("\n{HEADER},,,,,\nr2,g1,12,住房,漏雨,\n"));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].row, 2);
    }

    #[test]
    fn json_rows_take_the_same_checks() {
        let rows = parse(
            Format::Json,
            br#"[{"ref": "j1", "grid": "g1", "door_number": "12", "category": "Other", "text": "x"},
                {"ref": "j2", "grid": "g1", "door_number": "12", "category": "Flying", "text": "x", "urgent": true}]"#,
        )
        .unwrap();
        assert!(rows[0].order.is_ok());
        assert_eq!(
            codes(&rows[1]),
            vec![(Column::Category, RowErrorCode::UnknownCategory)]
        );
    }

    #[test]
    fn an_xlsx_file_is_read_with_numbers_and_booleans_as_written() {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        for (c, h) in [
            "工单编号",
            "网格",
            "门牌号",
            "类别",
            "诉求内容",
            "紧急",
            "备注",
        ]
        .iter()
        .enumerate()
        {
            sheet.write_string(0, c as u16, *h).unwrap();
        }
        sheet.write_number(1, 0, 20261201001.0).unwrap();
        sheet.write_string(1, 1, "g1").unwrap();
        sheet.write_number(1, 2, 12.0).unwrap();
        sheet.write_string(1, 3, "医疗").unwrap();
        sheet.write_string(1, 4, "需要上门体检").unwrap();
        sheet.write_boolean(1, 5, true).unwrap();
        sheet.write_string(2, 0, "x-2").unwrap();
        sheet.write_string(2, 1, "g1").unwrap();
        sheet.write_string(2, 2, "13").unwrap();
        sheet.write_string(2, 3, "交通").unwrap();
        sheet.write_string(2, 4, "修路").unwrap();
        let bytes = book.save_to_buffer().unwrap();
        assert_eq!(
            Format::detect("application/octet-stream", &bytes),
            Some(Format::Xlsx)
        );
        let rows = parse(Format::Xlsx, &bytes).unwrap();
        let first = rows[0].order.as_ref().unwrap();
        assert_eq!(
            (
                first.reference.as_str(),
                first.door_number.as_str(),
                first.urgent,
                first.category
            ),
            ("20261201001", "12", true, NeedCategory::HealthCare)
        );
        assert_eq!(
            codes(&rows[1]),
            vec![(Column::Category, RowErrorCode::UnknownCategory)]
        );
    }

    #[test]
    fn a_hostile_xlsx_file_is_bounded_before_it_is_read() {
        // A cell at the sheet's far corner is not a range of billions of cells.
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        for (c, h) in ["ref", "grid", "door_number", "category", "text"]
            .iter()
            .enumerate()
        {
            sheet.write_string(0, c as u16, *h).unwrap();
        }
        for (c, v) in ["r1", "g1", "12", "住房", "漏雨"].iter().enumerate() {
            sheet.write_string(1, c as u16, *v).unwrap();
        }
        sheet.write_string(1_048_575, 16_383, "far").unwrap();
        let rows = parse(Format::Xlsx, &book.save_to_buffer().unwrap()).unwrap();
        assert_eq!(rows.len(), 1, "the far cell is past the columns read");
        assert!(rows[0].order.is_ok());

        // A good workbook with one more entry that would unzip to more than an import
        // needs: refused before it is read.
        use std::io::Write;
        let good = {
            let mut book = rust_xlsxwriter::Workbook::new();
            let sheet = book.add_worksheet();
            sheet.write_string(0, 0, "ref").unwrap();
            book.save_to_buffer().unwrap()
        };
        let mut zipped = zip::ZipWriter::new_append(std::io::Cursor::new(good)).unwrap();
        zipped
            .start_file(
                "xl/media/padding.bin",
                zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated),
            )
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=(MAX_XLSX_UNZIPPED >> 20) {
            zipped.write_all(&zeros).unwrap();
        }
        let bomb = zipped.finish().unwrap().into_inner();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        assert_eq!(parse(Format::Xlsx, &bomb).unwrap_err(), FileError::Xlsx);
    }

    #[test]
    fn formats_are_told_by_content_type_and_signature() {
        assert_eq!(
            Format::detect("text/csv; charset=gbk", b"a"),
            Some(Format::Csv)
        );
        assert_eq!(Format::detect(XLSX_CONTENT_TYPE, b""), Some(Format::Xlsx));
        assert_eq!(
            Format::detect("text/csv", b"PK\x03\x04"),
            Some(Format::Xlsx)
        );
        assert_eq!(
            Format::detect("application/json", b"[]"),
            Some(Format::Json)
        );
        assert_eq!(Format::detect("text/plain", b"x"), None);
    }

    #[test]
    fn debug_output_never_shows_a_residents_request() {
        let rows = csv(&format!("{HEADER}r1,g1,门牌十二,住房,张三家房屋漏雨,\n"));
        let shown = format!("{rows:?}");
        assert!(shown.contains("r1"));
        assert!(
            !shown.contains("张三") && !shown.contains("门牌十二"),
            "{shown}"
        );
    }
}
