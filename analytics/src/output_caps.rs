//! Built-in SQL functions whose result can be far larger than their arguments, wrapped so
//! that one call cannot allocate past a query's memory limit.
//!
//! DataFusion's memory pool counts what operators hold (sorts, joins, aggregates), not what
//! a scalar function allocates for its result (apache/datafusion#12919). Without this,
//! `SELECT repeat('x', 100000000000)` or `SELECT range(1e12)` asks for hundreds of
//! gigabytes at once, and the process (the shared `bulkhead serve`) aborts when the
//! allocation fails. Each wrapped function works out, before calling the built-in, an upper
//! bound of the bytes its result for the batch takes from the arguments alone (lengths,
//! counts, ranges), and refuses the batch with a memory-limit error that names the function
//! when the bound passes the per-query limit. The built-ins are replaced under their own
//! names and aliases, so queries and their results are otherwise unchanged.

use arrow_array::cast::AsArray as _;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, FieldRef, TimeUnit};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::length::length;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry as _;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// How a function's result grows with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: the text `n` times.
    Repeat,
    /// `lpad` / `rpad(text, n [, fill])`: `n` characters.
    Pad,
    /// `replace(text, from, to)`: every `from` (or, when empty, every gap) becomes `to`.
    Replace,
    /// `regexp_replace(text, pattern, replacement [, flags])`: every match becomes the
    /// replacement, whose `$n` references each copy a match.
    RegexpReplace,
    /// `array_repeat(element, n)`: `n` elements.
    ArrayRepeat,
    /// `array_resize(array, n [, value])`: `n` elements.
    ArrayResize,
    /// `range` / `generate_series([start,] stop [, step])`: one element per step.
    Series,
}

/// The functions wrapped, by the name DataFusion registers them under.
const GUARDED: [(&str, Growth); 9] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::ArrayResize),
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
];

/// Replaces each function of [`GUARDED`] registered on `ctx` by one that refuses a batch
/// whose result would take more than `limit_bytes`.
pub fn register(ctx: &SessionContext, limit_bytes: usize) {
    for (name, growth) in GUARDED {
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(OutputCapped {
                inner: inner.as_ref().clone(),
                growth,
                limit_bytes,
            }));
        }
    }
}

/// A built-in function with a bound on its result's size.
#[derive(Debug, PartialEq, Eq, Hash)]
struct OutputCapped {
    inner: ScalarUDF,
    growth: Growth,
    limit_bytes: usize,
}

impl ScalarUDFImpl for OutputCapped {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let bound = result_bound(self.growth, &args.args, rows)?;
        if bound > self.limit_bytes as u128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}(…) would build up to {} for {rows} row(s), more than the query's memory \
                 limit of {} MiB; give it smaller counts or lengths, or raise --query-memory",
                self.name(),
                human_bytes(bound),
                self.limit_bytes >> 20
            )));
        }
        self.inner.invoke_with_args(args)
    }
}

/// An upper bound of the bytes `growth`'s result takes for `rows` rows of `args`.
fn result_bound(growth: Growth, args: &[ColumnarValue], rows: usize) -> Result<u128> {
    let arg = |i: usize| args.get(i);
    let of = |i: usize, f: fn(&ArrayRef) -> Result<Vec<u128>>| {
        arg(i).map_or_else(|| Ok(vec![0; rows]), |a| per_row(a, rows, f))
    };
    let lengths = |i: usize| of(i, byte_lengths);
    let counts = |i: usize| of(i, counts);
    let row_sizes = |i: usize| of(i, |a| Ok(array_row_sizes(a)));
    let sum = |per_row: &mut dyn Iterator<Item = u128>| per_row.fold(0u128, u128::saturating_add);
    Ok(match growth {
        Growth::Repeat => {
            let (text, n) = (lengths(0)?, counts(1)?);
            sum(&mut text.iter().zip(&n).map(|(&t, &n)| t * n))
        }
        // A character takes at most 4 bytes in UTF-8.
        Growth::Pad => sum(&mut counts(1)?.into_iter().map(|n| n * 4)),
        Growth::Replace => {
            let (text, from, to) = (lengths(0)?, lengths(1)?, lengths(2)?);
            sum(&mut text
                .iter()
                .zip(&from)
                .zip(&to)
                .map(|((&t, &f), &to)| t + (t / f.max(1) + 1) * to))
        }
        Growth::RegexpReplace => {
            // At most one match per position (plus the end); a `$n` reference takes at
            // least two characters and copies a match, and matches do not overlap.
            let (text, replacement) = (lengths(0)?, lengths(2)?);
            sum(&mut text
                .iter()
                .zip(&replacement)
                .map(|(&t, &p)| t + (t + 1) * p + p / 2 * t))
        }
        Growth::ArrayRepeat => {
            let (element, n) = (row_sizes(0)?, counts(1)?);
            sum(&mut element.iter().zip(&n).map(|(&e, &n)| e.max(1) * n))
        }
        Growth::ArrayResize => {
            let (n, value) = (counts(1)?, row_sizes(2)?);
            sum(&mut n.iter().zip(&value).map(|(&n, &v)| n * v.max(16)))
        }
        Growth::Series => sum(&mut series_lengths(args, rows)?.into_iter().map(|n| n * 8)),
    })
}

/// `of(array)` for each of `rows` rows: a scalar is worked out once, as an array of one
/// row, and stands for every row.
fn per_row<T: Clone>(
    arg: &ColumnarValue,
    rows: usize,
    of: impl Fn(&ArrayRef) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    match arg {
        ColumnarValue::Array(array) => of(array),
        ColumnarValue::Scalar(scalar) => Ok(of(&scalar.to_array()?)?
            .into_iter()
            .next()
            .map_or_else(Vec::new, |value| vec![value; rows])),
    }
}

/// Each row's byte length of a text or binary array (0 for null or another type).
fn byte_lengths(array: &ArrayRef) -> Result<Vec<u128>> {
    // Arrow's `length` kernel: bytes per value of text and binary arrays, null for null.
    match length(array) {
        Ok(lengths) => counts(&lengths),
        Err(_) => Ok(vec![0; array.len()]),
    }
}

/// Each row's value of an integer array, negatives and nulls as 0.
fn counts(array: &ArrayRef) -> Result<Vec<u128>> {
    Ok(cast(array, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .iter()
        .map(|v| v.map_or(0, |v| v.max(0) as u128))
        .collect())
}

/// An upper bound of each row's size in memory, for an array of any type.
fn array_row_sizes(array: &ArrayRef) -> Vec<u128> {
    let fixed = |width: usize| vec![width as u128; array.len()];
    let list = |offsets: Vec<usize>, values: &ArrayRef| {
        let inner = array_row_sizes(values);
        offsets
            .windows(2)
            .map(|w| 8 + inner[w[0]..w[1]].iter().sum::<u128>())
            .collect()
    };
    match array.data_type() {
        DataType::List(_) => {
            let a = array.as_list::<i32>();
            list(
                a.offsets().iter().map(|&o| o as usize).collect(),
                a.values(),
            )
        }
        DataType::LargeList(_) => {
            let a = array.as_list::<i64>();
            list(
                a.offsets().iter().map(|&o| o as usize).collect(),
                a.values(),
            )
        }
        DataType::Struct(_) => {
            let mut sizes = fixed(0);
            for column in array.as_struct().columns() {
                for (size, column) in sizes.iter_mut().zip(array_row_sizes(column)) {
                    *size += column;
                }
            }
            sizes
        }
        other => match other.primitive_width() {
            Some(width) => fixed(width),
            None => {
                let lengths = byte_lengths(array).unwrap_or_else(|_| fixed(0));
                // Text and binary: the bytes and an offset or view; anything else: its
                // share of the array's buffers, at least a word.
                let share = (array.get_array_memory_size() / array.len().max(1)).max(8) as u128;
                lengths
                    .into_iter()
                    .map(|l| if l > 0 { l + 16 } else { share })
                    .collect()
            }
        },
    }
}

/// Each row's element count of `range` / `generate_series([start,] stop [, step])`.
fn series_lengths(args: &[ColumnarValue], rows: usize) -> Result<Vec<u128>> {
    let (start, stop, step) = match args {
        [stop] => (None, stop, None),
        [start, stop] => (Some(start), stop, None),
        [start, stop, step, ..] => (Some(start), stop, Some(step)),
        [] => return Ok(vec![0; rows]),
    };
    let stop = per_row(stop, rows, instants)?;
    let start = match start {
        Some(start) => per_row(start, rows, instants)?,
        None => vec![Some(0); rows],
    };
    let step = match step {
        Some(step) => per_row(step, rows, steps)?,
        None => vec![1; rows],
    };
    Ok(start
        .iter()
        .zip(&stop)
        .zip(&step)
        .map(|((&start, &stop), &step)| match (start, stop) {
            (Some(a), Some(b)) if step > 0 => a.abs_diff(b) / step + 1,
            _ => 0,
        })
        .collect())
}

/// An integer, date or timestamp array as a number per row: the integer itself, else
/// nanoseconds since the epoch.
fn instants(array: &ArrayRef) -> Result<Vec<Option<i128>>> {
    let as_int = match array.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => cast(
            &cast(array, &DataType::Timestamp(TimeUnit::Nanosecond, None))?,
            &DataType::Int64,
        )?,
        _ => cast(array, &DataType::Int64)?,
    };
    Ok(as_int
        .as_primitive::<Int64Type>()
        .iter()
        .map(|v| v.map(i128::from))
        .collect())
}

/// A step array as a positive number per row: an integer's magnitude, an interval's
/// shortest length in nanoseconds (a month as 28 days); 0 when it cannot step.
fn steps(array: &ArrayRef) -> Result<Vec<u128>> {
    const DAY_NS: i128 = 86_400_000_000_000;
    Ok(match array.data_type() {
        DataType::Interval(_) => cast(
            array,
            &DataType::Interval(arrow_schema::IntervalUnit::MonthDayNano),
        )?
        .as_primitive::<arrow_array::types::IntervalMonthDayNanoType>()
        .iter()
        .map(|v| {
            v.map_or(0, |v| {
                let ns = i128::from(v.months) * 28 * DAY_NS
                    + i128::from(v.days) * DAY_NS
                    + i128::from(v.nanoseconds);
                ns.unsigned_abs()
            })
        })
        .collect(),
        _ => cast(array, &DataType::Int64)?
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map_or(0, |v| v.unsigned_abs() as u128))
            .collect(),
    })
}

fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::common::ScalarValue;

    /// A session with DataFusion's functions and the caps of `limit_bytes`.
    fn session(limit_bytes: usize) -> SessionContext {
        let ctx = SessionContext::new();
        register(&ctx, limit_bytes);
        ctx
    }

    async fn answer(ctx: &SessionContext, sql: &str) -> Result<String> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(pretty_format_batches(&batches)?.to_string())
    }

    #[test]
    fn every_guarded_function_is_a_datafusion_built_in() {
        let plain = SessionContext::new();
        let ctx = session(1 << 20);
        for (name, _) in GUARDED {
            let built_in = plain
                .udf(name)
                .unwrap_or_else(|_| panic!("DataFusion has no function {name:?} any more"));
            let guarded = ctx.udf(name).unwrap();
            assert_ne!(*guarded, *built_in, "{name} is not wrapped");
            for alias in built_in.aliases() {
                assert_eq!(
                    ctx.udf(alias).unwrap().name(),
                    name,
                    "alias {alias} of {name} is wrapped too"
                );
                assert_ne!(*ctx.udf(alias).unwrap(), *plain.udf(alias).unwrap());
            }
        }
    }

    #[tokio::test]
    async fn ordinary_calls_answer_as_the_built_ins_do() {
        let plain = SessionContext::new();
        let ctx = session(1 << 20);
        for sql in [
            "SELECT repeat('ab', 3), repeat(s, n) FROM (VALUES ('x', 2), (NULL, 1), ('yz', -1)) t(s, n)",
            "SELECT lpad('7', 3, '0'), rpad('ab', 4), lpad(s, 5, 'é') FROM (VALUES ('a'), ('bbbbbb')) t(s)",
            "SELECT replace('a-b-c', '-', '+'), replace('abc', '', '.'), regexp_replace('a1b22', '[0-9]+', '<$0>', 'g')",
            "SELECT array_repeat(1, 3), array_repeat('x', 2), array_repeat(make_array(1, 2), 2)",
            "SELECT array_resize(make_array(1, 2), 4, 0), array_resize(make_array('a'), 2)",
            "SELECT range(4), range(1, 10, 3), generate_series(5, 1, -2), \
             range(DATE '2026-01-01', DATE '2026-01-04', INTERVAL '1 day'), \
             generate_series(TIMESTAMP '2026-01-01 00:00:00', TIMESTAMP '2026-01-01 01:00:00', INTERVAL '20 minutes')",
            "SELECT range(a, b) FROM (VALUES (1, 3), (10, 12)) t(a, b)",
        ] {
            assert_eq!(
                answer(&ctx, sql).await.unwrap(),
                answer(&plain, sql).await.unwrap(),
                "{sql}"
            );
        }
    }

    #[tokio::test]
    async fn a_result_past_the_limit_is_refused_with_the_function_named() {
        // 1 MiB limit; each query below wants 10–100 MB, so that a missing guard shows up
        // as a query that answers, not as a machine out of memory.
        let ctx = session(1 << 20);
        for (sql, function) in [
            ("SELECT repeat('x', 10000000)", "repeat"),
            (
                "SELECT length(repeat(s, 1000)) FROM (VALUES (repeat('y', 2000)), ('z')) t(s)",
                "repeat",
            ),
            ("SELECT lpad('x', 10000000)", "lpad"),
            ("SELECT rpad('x', 10000000, 'ab')", "rpad"),
            (
                "SELECT replace(repeat('a', 5000), 'a', repeat('b', 5000))",
                "replace",
            ),
            (
                "SELECT regexp_replace(repeat('a', 5000), 'a', repeat('b', 5000), 'g')",
                "regexp_replace",
            ),
            ("SELECT array_repeat(1, 10000000)", "array_repeat"),
            ("SELECT list_repeat('x', 10000000)", "array_repeat"),
            (
                "SELECT array_resize(make_array(1), 10000000)",
                "array_resize",
            ),
            ("SELECT range(10000000)", "range"),
            ("SELECT generate_series(1, 10000000)", "generate_series"),
            (
                "SELECT range(TIMESTAMP '2026-01-01 00:00:00', TIMESTAMP '2026-01-02 00:00:00', INTERVAL '1 millisecond')",
                "range",
            ),
            (
                "SELECT cardinality(range(0, n)) FROM (VALUES (10), (10000000)) t(n)",
                "range",
            ),
        ] {
            let error = match answer(&ctx, sql).await {
                Ok(table) => panic!("{sql} answered past the limit ({} bytes)", table.len()),
                Err(e) => e,
            };
            let root = error.find_root();
            assert!(
                matches!(root, DataFusionError::ResourcesExhausted(_)),
                "{sql}: {root}"
            );
            let text = root.to_string();
            assert!(
                text.contains(&format!("{function}(…) would build up to"))
                    && text.contains("1 MiB"),
                "{sql}: {text}"
            );
        }
    }

    #[test]
    fn bounds_cover_what_the_functions_build() {
        let text = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())));
        let int = |n: i64| ColumnarValue::Scalar(ScalarValue::Int64(Some(n)));
        assert_eq!(
            result_bound(Growth::Repeat, &[text("abc"), int(4)], 2).unwrap(),
            24
        );
        assert_eq!(
            result_bound(Growth::Repeat, &[text("abc"), int(-4)], 1).unwrap(),
            0
        );
        // "abc" with "" replaced by "--": "--a--b--c--", 11 bytes.
        let bound = result_bound(Growth::Replace, &[text("abc"), text(""), text("--")], 1);
        assert!(bound.unwrap() >= 11);
        assert_eq!(
            result_bound(Growth::Series, &[int(1), int(10), int(3)], 1).unwrap(),
            4 * 8
        );
        assert_eq!(
            result_bound(Growth::Series, &[int(1), int(10), int(0)], 1).unwrap(),
            0
        );
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
