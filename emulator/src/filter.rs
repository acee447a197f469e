//! The slice of OData `$filter` that photosync uses to find users: `prop eq 'v'` and
//! `prop in ('a','b')` on `id`, `userPrincipalName`, `mail` and `employeeId`, joined with
//! `and`/`or` and parentheses. Quotes inside values are doubled (`'O''Brien'`).
//!
//! Invariant: an `in` list holds at most [`MAX_IN_VALUES`] values, like Graph's limit.

use std::fmt;

/// Graph's limit on the values of one `in` operator.
pub(crate) const MAX_IN_VALUES: usize = 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prop {
    Id,
    UserPrincipalName,
    Mail,
    EmployeeId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    /// `eq` (one value) or `in` (several).
    AnyOf(Prop, Vec<String>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FilterError(pub String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, FilterError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Tok::Open);
            }
            ')' => {
                chars.next();
                out.push(Tok::Close);
            }
            ',' => {
                chars.next();
                out.push(Tok::Comma);
            }
            '\'' => {
                chars.next();
                let mut v = String::new();
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            v.push('\'');
                        }
                        Some('\'') => break,
                        Some(c) => v.push(c),
                        None => {
                            return Err(FilterError(
                                "Syntax error: unterminated string literal in $filter.".into(),
                            ))
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | ',' | '\'') {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Tok::Word(w));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn or_expr(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.and_expr()?;
        while self.keyword("or") {
            self.pos += 1;
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.primary()?;
        while self.keyword("and") {
            self.pos += 1;
            let right = self.primary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Expr, FilterError> {
        match self.next() {
            Some(Tok::Open) => {
                let e = self.or_expr()?;
                match self.next() {
                    Some(Tok::Close) => Ok(e),
                    _ => Err(syntax("')' expected")),
                }
            }
            Some(Tok::Word(name)) => {
                let prop = prop(&name)?;
                match self.next() {
                    Some(Tok::Word(op)) if op.eq_ignore_ascii_case("eq") => match self.next() {
                        Some(Tok::Str(v)) => Ok(Expr::AnyOf(prop, vec![v])),
                        _ => Err(syntax("a quoted string is expected after 'eq'")),
                    },
                    Some(Tok::Word(op)) if op.eq_ignore_ascii_case("in") => self.in_list(prop),
                    Some(Tok::Word(op)) => Err(FilterError(format!(
                        "Unsupported or invalid query filter clause specified for property '{name}': operator '{op}' is not supported by graph-emulator."
                    ))),
                    _ => Err(syntax("an operator is expected")),
                }
            }
            _ => Err(syntax("a property name is expected")),
        }
    }

    fn in_list(&mut self, prop: Prop) -> Result<Expr, FilterError> {
        if self.next() != Some(Tok::Open) {
            return Err(syntax("'(' expected after 'in'"));
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Tok::Str(v)) => values.push(v),
                Some(Tok::Close) if values.is_empty() => break,
                _ => return Err(syntax("a quoted string is expected in the 'in' list")),
            }
            match self.next() {
                Some(Tok::Comma) => {}
                Some(Tok::Close) => break,
                _ => return Err(syntax("',' or ')' expected in the 'in' list")),
            }
        }
        if values.is_empty() {
            return Err(syntax("the 'in' list is empty"));
        }
        if values.len() > MAX_IN_VALUES {
            return Err(FilterError(format!(
                "Too many values in the 'in' operator: {} given, at most {MAX_IN_VALUES} are allowed.",
                values.len()
            )));
        }
        Ok(Expr::AnyOf(prop, values))
    }
}

fn syntax(what: &str) -> FilterError {
    FilterError(format!("Invalid filter clause: {what}."))
}

fn prop(name: &str) -> Result<Prop, FilterError> {
    match name.to_ascii_lowercase().as_str() {
        "id" => Ok(Prop::Id),
        "userprincipalname" => Ok(Prop::UserPrincipalName),
        "mail" => Ok(Prop::Mail),
        "employeeid" => Ok(Prop::EmployeeId),
        _ => Err(FilterError(format!(
            "Unsupported or invalid query filter clause specified for property '{name}' of resource 'User'."
        ))),
    }
}

pub(crate) fn parse(s: &str) -> Result<Expr, FilterError> {
    let mut p = Parser {
        toks: tokenize(s)?,
        pos: 0,
    };
    let e = p.or_expr()?;
    if p.pos != p.toks.len() {
        return Err(syntax("unexpected text after the expression"));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq_and_in_with_doubled_quotes() {
        assert_eq!(
            parse("employeeId eq 'O''Brien'"),
            Ok(Expr::AnyOf(Prop::EmployeeId, vec!["O'Brien".into()]))
        );
        assert_eq!(
            parse("mail in ('a@x.com', 'b''c@x.com')"),
            Ok(Expr::AnyOf(
                Prop::Mail,
                vec!["a@x.com".into(), "b'c@x.com".into()]
            ))
        );
        assert!(matches!(
            parse("(mail eq 'a') or userPrincipalName eq 'b' and id eq 'c'"),
            Ok(Expr::Or(..))
        ));
    }

    #[test]
    fn rejects_bad_syntax_and_long_lists() {
        assert!(parse("mail eq").is_err());
        assert!(parse("mail eq 'a").is_err());
        assert!(parse("displayName eq 'a'").is_err());
        assert!(parse("mail ne 'a'").is_err());
        assert!(parse("mail eq 'a' extra").is_err());
        let list: Vec<String> = (0..16).map(|i| format!("'{i}'")).collect();
        assert!(parse(&format!("employeeId in ({})", list.join(","))).is_err());
        let list: Vec<String> = (0..15).map(|i| format!("'{i}'")).collect();
        assert!(parse(&format!("employeeId in ({})", list.join(","))).is_ok());
    }
}
