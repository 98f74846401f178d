//! Listings: a SELECT assembled from a query's filters, its sort column and
//! its marker, with the same SQL on SQLite and PostgreSQL.
//!
//! Rows are ordered by (sort column, id), id in the same direction, so ties
//! have a stable order and a page starts right after its marker row. A NULL
//! sorts before every value (ascending) and after every value (descending),
//! as in Ironic on MySQL; both databases are told so explicitly because their
//! defaults differ.

use crate::{SortDir, StoreError};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AssertSqlSafe};

/// A value bound to a placeholder.
pub(crate) enum Value {
    Text(String),
    Bool(bool),
    Int(i64),
}

/// A column a listing may be sorted by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SortColumn {
    pub name: &'static str,
    pub nullable: bool,
}

impl SortColumn {
    pub const ID: SortColumn = SortColumn::not_null("id");

    pub const fn not_null(name: &'static str) -> Self {
        SortColumn {
            name,
            nullable: false,
        }
    }

    pub const fn nullable(name: &'static str) -> Self {
        SortColumn {
            name,
            nullable: true,
        }
    }

    /// The column named `key` among `columns`; `id` for None or an unknown
    /// key (the API refuses unknown keys before asking).
    pub fn find(columns: &[SortColumn], key: Option<&str>) -> SortColumn {
        key.and_then(|key| columns.iter().find(|c| c.name == key))
            .copied()
            .unwrap_or(SortColumn::ID)
    }
}

/// A SELECT over one table (aliased `t`) being assembled.
pub(crate) struct Select {
    columns: &'static str,
    table: &'static str,
    conditions: Vec<String>,
    values: Vec<Value>,
}

impl Select {
    pub fn new(columns: &'static str, table: &'static str) -> Self {
        Select {
            columns,
            table,
            conditions: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Binds `value` and returns its placeholder.
    fn placeholder(&mut self, value: Value) -> String {
        self.values.push(value);
        format!("${}", self.values.len())
    }

    /// Keeps rows whose `column` equals `value`.
    pub fn equal(&mut self, column: &'static str, value: Value) {
        let placeholder = self.placeholder(value);
        self.conditions.push(format!("t.{column} = {placeholder}"));
    }

    /// Keeps rows whose `column` is one of `values` (none if empty).
    pub fn one_of(&mut self, column: &'static str, values: Vec<Value>) {
        if values.is_empty() {
            self.conditions.push("1 = 0".to_string());
            return;
        }
        let placeholders: Vec<String> = values.into_iter().map(|v| self.placeholder(v)).collect();
        self.conditions
            .push(format!("t.{column} IN ({})", placeholders.join(", ")));
    }

    /// Keeps rows whose `column` is NULL (or is not).
    pub fn null(&mut self, column: &'static str, is_null: bool) {
        let test = if is_null { "IS NULL" } else { "IS NOT NULL" };
        self.conditions.push(format!("t.{column} {test}"));
    }

    /// Runs the SELECT in `sort` order, starting after the row whose id is
    /// `marker_id`, at most `limit` rows.
    pub async fn fetch(
        mut self,
        conn: &mut AnyConnection,
        sort: SortColumn,
        dir: SortDir,
        marker_id: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let mut from = format!("{} t", self.table);
        if let Some(marker_id) = marker_id {
            let placeholder = self.placeholder(Value::Int(marker_id));
            if sort.name == "id" {
                let op = if dir == SortDir::Asc { ">" } else { "<" };
                self.conditions.push(format!("t.id {op} {placeholder}"));
            } else {
                from.push_str(&format!(
                    " CROSS JOIN (SELECT {} AS v, id FROM {} WHERE id = {placeholder}) m",
                    sort.name, self.table
                ));
                self.conditions.push(after_marker(sort, dir));
            }
        }
        let mut filter = String::new();
        if !self.conditions.is_empty() {
            filter.push_str(" WHERE ");
            filter.push_str(&self.conditions.join(" AND "));
        }
        let order = order_by(sort, dir);
        let sql = match limit {
            // Sorting whole rows drags their JSON through the sorter: sort
            // the ids alone, then read the rows of the page.
            Some(limit) if sort.name != "id" => {
                let limit = self.placeholder(Value::Int(i64::from(limit)));
                format!(
                    "SELECT {columns} FROM {table} t WHERE t.id IN \
                     (SELECT t.id FROM {from}{filter}{order} LIMIT {limit}){order}",
                    columns = self.columns,
                    table = self.table,
                )
            }
            Some(limit) => {
                let limit = self.placeholder(Value::Int(i64::from(limit)));
                format!(
                    "SELECT {} FROM {from}{filter}{order} LIMIT {limit}",
                    self.columns
                )
            }
            None => format!("SELECT {} FROM {from}{filter}{order}", self.columns),
        };

        // Every identifier in `sql` is one of this crate's constants; every
        // value is bound.
        let mut query: Query<'_, Any, AnyArguments> = sqlx::query(AssertSqlSafe(sql));
        for value in self.values {
            query = match value {
                Value::Text(v) => query.bind(v),
                Value::Bool(v) => query.bind(v),
                Value::Int(v) => query.bind(v),
            };
        }
        query.fetch_all(conn).await
    }
}

/// ` ORDER BY ...` for `sort` in direction `dir`.
fn order_by(sort: SortColumn, dir: SortDir) -> String {
    let (dir, nulls) = match dir {
        SortDir::Asc => ("ASC", " NULLS FIRST"),
        SortDir::Desc => ("DESC", " NULLS LAST"),
    };
    if sort.name == "id" {
        format!(" ORDER BY t.id {dir}")
    } else {
        let nulls = if sort.nullable { nulls } else { "" };
        format!(" ORDER BY t.{} {dir}{nulls}, t.id {dir}", sort.name)
    }
}

/// The condition "row `t` comes after the marker row `m`", where `m.v` is
/// the marker's sort value and `m.id` its id.
fn after_marker(sort: SortColumn, dir: SortDir) -> String {
    let c = sort.name;
    match (dir, sort.nullable) {
        (SortDir::Asc, false) => format!("(t.{c}, t.id) > (m.v, m.id)"),
        (SortDir::Desc, false) => format!("(t.{c}, t.id) < (m.v, m.id)"),
        // NULLs first: after a NULL marker come the later NULLs and every
        // value; after a value, only greater ones (a comparison with NULL is
        // never true).
        (SortDir::Asc, true) => format!(
            "((m.v IS NULL AND (t.{c} IS NOT NULL OR t.id > m.id)) OR (t.{c}, t.id) > (m.v, m.id))"
        ),
        // NULLs last: after a NULL marker come only the later NULLs; after a
        // value, the smaller ones and every NULL.
        (SortDir::Desc, true) => format!(
            "((m.v IS NULL AND t.{c} IS NULL AND t.id < m.id) \
             OR (m.v IS NOT NULL AND (t.{c} IS NULL OR (t.{c}, t.id) < (m.v, m.id))))"
        ),
    }
}

/// Rows parsed inline; more are parsed on blocking threads, this many per
/// thread. Parsing a node's JSON takes a few microseconds: a listing of
/// thousands would stall the async runtime for milliseconds, and split
/// across cores it comes back sooner.
const ROWS_PER_TASK: usize = 250;

/// `parse` applied to every row, in order.
pub(crate) async fn parse_rows<T: Send + 'static>(
    rows: Vec<AnyRow>,
    parse: fn(&AnyRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    if rows.len() <= ROWS_PER_TASK {
        return rows.iter().map(parse).collect();
    }
    let total = rows.len();
    let mut rest = rows;
    let mut tasks = Vec::new();
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(ROWS_PER_TASK));
        let chunk = std::mem::replace(&mut rest, tail);
        tasks.push(tokio::task::spawn_blocking(move || {
            chunk
                .iter()
                .map(parse)
                .collect::<Result<Vec<T>, StoreError>>()
        }));
    }
    let mut parsed = Vec::with_capacity(total);
    for task in tasks {
        match task.await {
            Ok(chunk) => parsed.extend(chunk?),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    Ok(parsed)
}
