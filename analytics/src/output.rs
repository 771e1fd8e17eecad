//! Result formats: an aligned table, CSV, JSON (one object per line), Parquet; and rows
//! as JSON arrays for the HTTP API.

use std::io::Write;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};
use datafusion::arrow::util::pretty::pretty_format_batches;

/// How `bulkhead sql` prints results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON object per row (NDJSON).
    Json,
    /// Apache Parquet (needs --output).
    Parquet,
}

/// Writes `batches` (all of one `schema`) to `out` in `format`.
pub fn write(
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    out: &mut (dyn Write + Send),
) -> Result<(), ArrowError> {
    match format {
        Format::Table => {
            if batches.iter().all(|b| b.num_rows() == 0) {
                // Still show the columns of an empty result.
                let empty = RecordBatch::new_empty(schema.clone());
                writeln!(out, "{}", pretty_format_batches(&[empty])?)?;
            } else {
                writeln!(out, "{}", pretty_format_batches(batches)?)?;
            }
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            writeln!(out, "{rows} row{}", if rows == 1 { "" } else { "s" })?;
        }
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for b in batches {
                writer.write(b)?;
            }
        }
        Format::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(out);
            for b in batches {
                writer.write(b)?;
            }
            writer.finish()?;
        }
        Format::Parquet => {
            let mut writer =
                datafusion::parquet::arrow::ArrowWriter::try_new(out, schema.clone(), None)
                    .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
            for b in batches {
                writer
                    .write(b)
                    .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
            }
            writer
                .close()
                .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        }
    }
    Ok(())
}

/// Column name and Arrow type, as the HTTP API describes them.
pub fn columns(schema: &SchemaRef) -> Vec<serde_json::Value> {
    schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect()
}

/// The rows of `batch` as JSON arrays in column order (timestamps as RFC 3339 text,
/// maps as objects, NULL as null).
pub fn json_rows(batch: &RecordBatch) -> Result<Vec<serde_json::Value>, ArrowError> {
    let mut buf = Vec::new();
    {
        let mut writer = datafusion::arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, datafusion::arrow::json::writer::JsonArray>(&mut buf);
        writer.write(batch)?;
        writer.finish()?;
    }
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    let objects: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(&buf).map_err(|e| ArrowError::JsonError(e.to_string()))?;
    let names: Vec<&String> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect();
    Ok(objects
        .into_iter()
        .map(|mut o| {
            serde_json::Value::Array(
                names
                    .iter()
                    .map(|n| o.remove(n.as_str()).unwrap_or(serde_json::Value::Null))
                    .collect(),
            )
        })
        .collect())
}
