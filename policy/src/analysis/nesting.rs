//! A bound on how deep a syntax tree the parser could build, checked on the tokens
//! before parsing.
//!
//! sqlparser's recursion limit bounds the parser's own recursion, but operator chains
//! (`a OR b OR c ...`, `x || y || ...`, `1::int::int ...`, `a[1][2]...`) and set
//! operations (`SELECT 1 UNION SELECT 2 UNION ...`) are parsed in loops that wrap the
//! previous node once per operator. A 1 MiB statement can thus become a tree hundreds
//! of thousands of levels deep, and dropping, comparing or walking it recursively
//! overflows the thread's stack, which aborts the whole proxy.
//!
//! Every node such a loop adds is announced by an operator token, so the number of
//! operator tokens bounds the extra depth. Items of a comma-separated list are
//! siblings, not nested, so the count restarts at each comma; brackets nest, so the
//! counts of enclosing levels add up. The bound over-counts (it ignores precedence), so
//! it may refuse a statement that would have been shallow, but never the reverse for
//! the operators it knows: every token that is not a literal, identifier, comma,
//! bracket or semicolon counts, as do the keywords that sqlparser parses as infix
//! operators or set operations.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan};

/// The deepest operator nesting accepted. Comparing two syntax trees (done once per
/// analysis to check the re-serialization) needs about 1 KiB of stack per level in
/// optimised builds and several KiB in debug builds; this keeps a statement well inside
/// a 2 MiB thread stack in both. PostgreSQL's own `max_stack_depth` would refuse chains
/// far longer than this anyway.
pub(crate) const MAX_OPERATOR_NESTING: usize = 200;

/// Keywords that sqlparser parses as binary or postfix operators.
const OPERATOR_KEYWORDS: &[Keyword] = &[
    Keyword::AND,
    Keyword::OR,
    Keyword::XOR,
    Keyword::NOT,
    Keyword::IS,
    Keyword::NOTNULL,
    Keyword::LIKE,
    Keyword::ILIKE,
    Keyword::RLIKE,
    Keyword::REGEXP,
    Keyword::MATCH,
    Keyword::GLOB,
    Keyword::SIMILAR,
    Keyword::MEMBER,
    Keyword::IN,
    Keyword::BETWEEN,
    Keyword::OVERLAPS,
    Keyword::OPERATOR,
    Keyword::DIV,
    Keyword::AT,
    Keyword::COLLATE,
    Keyword::GLOBAL,
];

/// Keywords that chain set operations.
const SET_OPERATION_KEYWORDS: &[Keyword] = &[
    Keyword::UNION,
    Keyword::INTERSECT,
    Keyword::EXCEPT,
    Keyword::MINUS,
];

/// One bracket level: its parents' total, and its own chains so far.
#[derive(Clone, Copy, Default)]
struct Level {
    /// Operator nesting contributed by enclosing levels.
    base: usize,
    /// Set operations at this level (they nest across the commas of select lists).
    set_operations: usize,
    /// Operators in the current list item at this level.
    operators: usize,
}

impl Level {
    fn total(&self) -> usize {
        self.base
            .saturating_add(self.set_operations)
            .saturating_add(self.operators)
    }
}

/// Whether the tokens could make the parser nest operators deeper than
/// [`MAX_OPERATOR_NESTING`].
pub(crate) fn too_deep(tokens: &[TokenWithSpan]) -> bool {
    let mut stack: Vec<Level> = Vec::new();
    let mut current = Level::default();
    for token in tokens {
        match &token.token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                if matches!(token.token, Token::LBracket) {
                    // `a[1][2]...` subscripts chain like operators.
                    current.operators = current.operators.saturating_add(1);
                }
                // The brackets themselves nest through the parser's recursion, which
                // its recursion limit bounds; only the operator chains add up here.
                let base = current.total();
                stack.push(current);
                current = Level {
                    base,
                    ..Level::default()
                };
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                // Unbalanced closers are the parser's to report.
                current = stack.pop().unwrap_or_default();
            }
            Token::Comma => current.operators = 0,
            Token::SemiColon if stack.is_empty() => current = Level::default(),
            Token::Word(word) if SET_OPERATION_KEYWORDS.contains(&word.keyword) => {
                current.set_operations = current.set_operations.saturating_add(1);
                current.operators = 0;
            }
            Token::Word(word) if OPERATOR_KEYWORDS.contains(&word.keyword) => {
                current.operators = current.operators.saturating_add(1);
            }
            token if is_operand_or_layout(token) => {}
            _ => current.operators = current.operators.saturating_add(1),
        }
        if current.total() > MAX_OPERATOR_NESTING {
            return true;
        }
    }
    false
}

/// Tokens that never make the parser wrap a node: words that are not operators,
/// literals, parameters, whitespace and separators.
fn is_operand_or_layout(token: &Token) -> bool {
    matches!(
        token,
        Token::EOF
            | Token::Word(_)
            | Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_)
            | Token::Whitespace(_)
            | Token::SemiColon
            | Token::CopyData { .. }
    )
}
