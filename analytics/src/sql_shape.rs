//! Checks on a query's text before it is parsed, for shapes that would crash or stall the
//! planner rather than fail.
//!
//! The SQL parser bounds nesting (parentheses, subqueries, function calls: DataFusion's
//! `sql_parser.recursion_limit`), but it builds a chain of operators at one level, `1+1+…`
//! or `a = 1 OR a = 2 OR …`, in a loop, into a tree as deep as the chain is long. Planning
//! and dropping that tree recurse once per level: 8,000 `+1` overflowed an 8 MiB stack,
//! and the process aborts (`bulkhead serve` with every client's queries). Joins (by `JOIN`
//! or by commas in a FROM list) do not crash but plan in time that grows steeply with their number (100 joins 0.3 s, 300 joins
//! 4 s, 1,000 joins more than two minutes), on a thread the query's time limit cannot
//! interrupt. So the text is tokenized (iteratively) and refused with a clear error when
//! its operators nest too deep (the longest chain at each level of parentheses, plus the
//! deepest group inside it), or the query has too many joins.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// How deep operators may nest. At about 1.2 KB of stack per level, 2,000 take ~2.5 MB;
/// the `bulkhead` runtime's threads have 16 MiB.
pub const MAX_CHAINED_OPERATORS: usize = 2_000;

/// The most joins in one query: `JOIN`s, and commas between the tables of a FROM list.
pub const MAX_JOINS: usize = 100;

/// Operators that chain into one another, by precedence: a chain of one class nests one
/// level per operator; operators of a tighter class nest inside its terms.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Chain {
    Logical,
    Comparison,
    Additive,
    Multiplicative,
    Bitwise,
    SetOperation,
    Other,
}

const CHAINS: usize = 7;

fn chain_of(token: &Token) -> Option<Chain> {
    Some(match token {
        Token::Word(word) => match word.keyword {
            Keyword::AND | Keyword::OR | Keyword::XOR => Chain::Logical,
            Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT => Chain::SetOperation,
            _ => return None,
        },
        Token::Eq
        | Token::DoubleEq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship => Chain::Comparison,
        Token::Plus | Token::Minus | Token::StringConcat => Chain::Additive,
        Token::Mul | Token::Div | Token::DuckIntDiv | Token::Mod => Chain::Multiplicative,
        Token::Ampersand | Token::Pipe | Token::Caret | Token::ShiftLeft | Token::ShiftRight => {
            Chain::Bitwise
        }
        Token::Arrow
        | Token::LongArrow
        | Token::HashArrow
        | Token::HashLongArrow
        | Token::AtArrow
        | Token::ArrowAt
        | Token::Tilde
        | Token::TildeAsterisk
        | Token::ExclamationMarkTilde
        | Token::ExclamationMarkTildeAsterisk
        | Token::DoubleTilde
        | Token::DoubleTildeAsterisk
        | Token::ExclamationMarkDoubleTilde
        | Token::ExclamationMarkDoubleTildeAsterisk
        | Token::CustomBinaryOperator(_) => Chain::Other,
        _ => return None,
    })
}

/// Keywords after which a FROM list's commas no longer join tables.
const ENDS_FROM: [Keyword; 12] = [
    Keyword::WHERE,
    Keyword::GROUP,
    Keyword::HAVING,
    Keyword::ORDER,
    Keyword::LIMIT,
    Keyword::OFFSET,
    Keyword::QUALIFY,
    Keyword::WINDOW,
    Keyword::UNION,
    Keyword::INTERSECT,
    Keyword::EXCEPT,
    Keyword::SELECT,
];

/// One level of parentheses.
#[derive(Default)]
struct Level {
    /// The operators of each [`Chain`] at this level.
    counts: [usize; CHAINS],
    /// How deep the deepest closed group inside this level nests.
    deepest_group: usize,
    /// Inside this level's FROM list, where a comma joins one more table.
    in_from: bool,
}

impl Level {
    /// How deep this level's expression nests: its longest chain, with the deepest group
    /// inside it as one of its terms.
    fn depth(&self) -> usize {
        self.counts.iter().max().copied().unwrap_or(0) + self.deepest_group
    }
}

/// Closes the innermost of `levels` (at least two), a group inside the one around it.
fn close_group(levels: &mut Vec<Level>) {
    let closed = levels.pop().expect("an inner level").depth();
    let outer = levels.last_mut().expect("the outer level");
    outer.deepest_group = outer.deepest_group.max(closed);
}

/// `Err` with what is wrong when `sql` nests operators deeper than
/// [`MAX_CHAINED_OPERATORS`] (chains at one level, and the chains of the groups inside
/// them), or joins more than [`MAX_JOINS`] times. Text that does not tokenize passes: the
/// parser then says why.
pub fn check(sql: &str) -> Result<(), String> {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(());
    };
    let mut levels = vec![Level::default()];
    let mut joins = 0;
    // The operator with the longest chain at any level, to name it.
    let mut longest: Option<(usize, &Token)> = None;
    for token in &tokens {
        match token {
            Token::LParen => levels.push(Level::default()),
            Token::RParen if levels.len() > 1 => close_group(&mut levels),
            Token::Word(word) if word.keyword == Keyword::JOIN => joins += 1,
            Token::Comma if levels.last().is_some_and(|level| level.in_from) => joins += 1,
            Token::Word(word) if word.keyword == Keyword::FROM => {
                levels.last_mut().expect("a level").in_from = true;
            }
            Token::Word(word) if ENDS_FROM.contains(&word.keyword) => {
                levels.last_mut().expect("a level").in_from = false;
            }
            token => {
                if let Some(chain) = chain_of(token) {
                    let count = &mut levels.last_mut().expect("a level").counts[chain as usize];
                    *count += 1;
                    if longest.is_none_or(|(n, _)| *count > n) {
                        longest = Some((*count, token));
                    }
                }
            }
        }
    }
    if joins > MAX_JOINS {
        return Err(format!(
            "the query joins {joins} times (JOINs and commas in FROM); planning time grows \
             steeply with joins, so at most {MAX_JOINS} are planned"
        ));
    }
    // Groups left open (text that will not parse) count as closed here.
    while levels.len() > 1 {
        close_group(&mut levels);
    }
    let depth = levels[0].depth();
    match longest {
        Some((_, token)) if depth > MAX_CHAINED_OPERATORS => Err(format!(
            "the query nests operators {depth} deep (chains of `{token}`), more than the \
             {MAX_CHAINED_OPERATORS} that can be planned; write a long list of OR comparisons \
             as IN (…), or split the expression"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chained(operator: &str, n: usize) -> String {
        format!("SELECT 1{}", format!(" {operator} 1").repeat(n))
    }

    #[test]
    fn long_chains_are_refused_with_the_operator_named() {
        for operator in ["+", "-", "*", "||", "AND", "OR", "=", "&"] {
            let err = check(&chained(operator, MAX_CHAINED_OPERATORS + 1)).unwrap_err();
            assert!(
                err.contains(&format!("chains of `{operator}`")),
                "{operator}: {err}"
            );
            assert!(err.contains("2001 deep") && err.contains("2000"), "{err}");
            check(&chained(operator, MAX_CHAINED_OPERATORS)).unwrap();
        }
        // `+` and `-` are one precedence: a mixed chain counts as one.
        let mixed = format!(
            "SELECT 1{}",
            " + 1 - 1".repeat(MAX_CHAINED_OPERATORS / 2 + 1)
        );
        assert!(check(&mixed).is_err());
        // Chains inside groups add to the chain the group is a term of.
        let half = " + 1".repeat(MAX_CHAINED_OPERATORS / 2);
        let nested = format!("SELECT (((1{half}){half}){half})");
        assert!(check(&nested).unwrap_err().contains("3000 deep"));
    }

    #[test]
    fn ordinary_queries_pass() {
        let or_list = (0..1_000)
            .map(|i| format!("dst_port = {i}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let half = " + 1".repeat(MAX_CHAINED_OPERATORS / 2);
        for sql in [
            "SELECT src_ip, count(*) FROM flows WHERE dst_port = 443 AND bytes > 10 GROUP BY 1"
                .to_string(),
            format!("SELECT count(*) FROM flows WHERE {or_list}"),
            // Groups side by side do not nest: each is as deep as its own chain.
            format!("SELECT (1{half}), (1{half}), (1{half})"),
            format!("SELECT {}", vec!["(1 + 1)"; 3_000].join(", ")),
            "SELECT 'a + b + c' || '-- not + operators'".to_string(),
            "SELECT 1 + unterminated '".to_string(),
        ] {
            check(&sql).unwrap_or_else(|e| panic!("{}: {e}", &sql[..60.min(sql.len())]));
        }
    }

    #[test]
    fn too_many_joins_are_refused() {
        let joins = |n: usize| {
            (1..=n).fold("SELECT count(*) FROM flows f0".to_string(), |sql, i| {
                format!("{sql} JOIN flows f{i} ON f{i}.src_ip = f0.src_ip")
            })
        };
        check(&joins(MAX_JOINS)).unwrap();
        let err = check(&joins(MAX_JOINS + 1)).unwrap_err();
        assert!(
            err.contains("joins 101 times") && err.contains("at most 100"),
            "{err}"
        );
        let tables = |n: usize| (0..n).map(|i| format!("flows f{i}")).collect::<Vec<_>>();
        let commas =
            |n: usize| format!("SELECT count(*) FROM {} WHERE 1 = 1", tables(n).join(", "));
        check(&commas(MAX_JOINS + 1)).unwrap();
        assert!(
            check(&commas(MAX_JOINS + 2))
                .unwrap_err()
                .contains("joins 101 times")
        );
        // Commas elsewhere (select lists, IN lists, function arguments) join nothing.
        let columns = vec!["src_ip"; 500].join(", ");
        let ports = (0..500)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        check(&format!(
            "SELECT {columns} FROM flows WHERE dst_port IN ({ports}) ORDER BY {columns}"
        ))
        .unwrap();
    }
}
