//! `docs/lake.md`, the data dictionary SQL users read, against the tables' schemas: every
//! table has a section, and its column table lists every column, in the files' order,
//! with its Delta type and whether it can be NULL.

use arrow_schema::{DataType, TimeUnit};
use bulkhead_schemas::lake::TABLES;

/// The Delta type name of a lake column's Arrow type (what Spark's `DESCRIBE` says).
fn delta_type(data_type: &DataType) -> String {
    match data_type {
        DataType::Utf8 => "string".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "long".into(),
        DataType::Float64 => "double".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => "timestamp".into(),
        DataType::List(item) => format!("array<{}>", delta_type(item.data_type())),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(fields) => format!(
                "map<{},{}>",
                delta_type(fields[0].data_type()),
                delta_type(fields[1].data_type())
            ),
            other => panic!("a map of {other:?}"),
        },
        other => panic!("no Delta name for {other:?}: add it here and to docs/lake.md"),
    }
}

/// `(column, type, nullable)` of each row of the column table in the section of `table`.
fn documented(doc: &str, table: &str) -> Vec<(String, String, bool)> {
    let header = format!("## `{table}`");
    let section = doc
        .split_once(&header)
        .unwrap_or_else(|| panic!("docs/lake.md has no section {header}"))
        .1;
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (column, data_type, null) = (cells[1], cells[2], cells[3]);
            (
                column.trim_matches('`').to_string(),
                data_type.to_string(),
                match null {
                    "null" => true,
                    "" => false,
                    other => panic!("{table}.{column}: null column says {other:?}"),
                },
            )
        })
        .collect()
}

#[test]
fn the_data_dictionary_lists_every_column_with_its_type_and_nullability() {
    // The crate's directory as cargo gives it when the test runs: the one baked in at
    // compile time is stale when a shared target dir holds a build from another checkout.
    let crate_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let path = std::path::Path::new(&crate_dir).join("../docs/lake.md");
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for table in TABLES {
        let schema = (table.schema)();
        let actual: Vec<(String, String, bool)> = schema
            .fields()
            .iter()
            .map(|field| {
                (
                    field.name().clone(),
                    delta_type(field.data_type()),
                    field.is_nullable(),
                )
            })
            .collect();
        let documented = documented(&doc, table.name);
        for (i, column) in actual.iter().enumerate() {
            assert_eq!(
                documented.get(i),
                Some(column),
                "docs/lake.md, table {}: column {} should be {column:?}",
                table.name,
                i + 1
            );
        }
        assert_eq!(
            documented.len(),
            actual.len(),
            "docs/lake.md, table {}: documents columns the table does not have: {:?}",
            table.name,
            &documented[actual.len().min(documented.len())..]
        );
    }
}
