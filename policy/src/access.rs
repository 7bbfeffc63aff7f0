//! One identity's view of the governed database under one policy and one catalog:
//! casbin grants (memoized), and per relation whether it is read as is or through a
//! derived table with the identity's row filter and masks.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;
use sqlparser::ast::{DataType, Expr, Query, Statement};

use crate::catalog::{Catalog, GOVERNED_SYSTEM_RELATIONS, Relation};
use crate::decision::{Denial, sqlstate};
use crate::governance::Governance;
use crate::governance::enforcer::{Subject, Value};
use crate::governance::mask::Mask;
use crate::governance::native::Protected;
use crate::identity::Identity;
use crate::rewrite::write::quoted;
use crate::rewrite::{Act, Census, Read, Resolve, TargetRule};

/// How one relation looks to the identity.
#[derive(Debug, Clone)]
enum View {
    /// Read it as it is.
    Open,
    /// Read it through this derived table.
    Derived {
        /// The derived table's query as printed, proven to parse back to itself alone
        /// and as a derived table in FROM.
        text: Arc<str>,
        filter: Option<String>,
        filter_columns: Vec<String>,
        masked: Vec<String>,
        rule: String,
    },
}

/// A relation's view for the identity, or why it has none (remembered either way).
type ViewResult = Result<Arc<View>, Denial>;

/// A write target's relation and view.
type Target = (Arc<Relation>, Arc<View>);

/// See the module docs. Built per (policy version, catalog generation, identity) and
/// cached by the engine.
pub(crate) struct Access {
    pub(crate) key: u64,
    governance: Arc<Governance>,
    catalog: Arc<Catalog>,
    identity: Identity,
    /// The user and its assigned roles: the casbin principals checked.
    principals: Vec<String>,
    /// Principals plus every role inherited through `g` lines.
    effective: BTreeSet<String>,
    /// Settings the proxy sets for the identity's native row-level security, which
    /// its statements may not change.
    protected: Vec<Protected>,
    /// By the relation's address in `catalog` (which this access keeps alive) and act.
    grants: Mutex<HashMap<(usize, Act), bool>>,
    wildcard: Mutex<HashMap<(String, &'static str), bool>>,
    functions: Mutex<HashMap<String, bool>>,
    /// By the relation's address in `catalog` and `ONLY`.
    views: Mutex<HashMap<(usize, bool), ViewResult>>,
    /// Parses of the policy's and catalog's texts that rewritten writes are built from
    /// (see [`Resolve::expr`]).
    parsed: Mutex<Parsed>,
}

/// Remembered parses, by text. A parse depends on its text alone, so what is
/// remembered is right for whoever asks; the texts come from the policy and the
/// catalog, so there are few of them, and each map is emptied when it grows past
/// [`PARSED_ENTRIES`] all the same.
#[derive(Default)]
struct Parsed {
    exprs: HashMap<Box<str>, Expr>,
    queries: HashMap<Box<str>, Box<Query>>,
    types: HashMap<Box<str>, DataType>,
}

/// How many parses of each kind an access remembers at most.
const PARSED_ENTRIES: usize = 1024;

/// `text` parsed by `parse`, remembered in the map `pick` selects from `parsed` (no
/// lock is held while parsing; failures are not remembered).
fn remembered<V: Clone>(
    parsed: &Mutex<Parsed>,
    pick: fn(&mut Parsed) -> &mut HashMap<Box<str>, V>,
    text: &str,
    parse: fn(&str) -> Result<V, Denial>,
) -> Result<V, Denial> {
    if let Some(found) = pick(&mut parsed.lock()).get(text) {
        return Ok(found.clone());
    }
    let value = parse(text)?;
    let mut parsed = parsed.lock();
    let map = pick(&mut parsed);
    if map.len() >= PARSED_ENTRIES {
        map.clear();
    }
    map.insert(text.into(), value.clone());
    Ok(value)
}

fn deny(message: String, rule: &str) -> Denial {
    Denial {
        sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE,
        message: format!("portcullis: permission denied: {message}; rule: {rule}"),
        rule: rule.to_string(),
    }
}

impl Access {
    /// The key an identity's access is cached under.
    pub(crate) fn key_of(version: &str, catalog: &Catalog, identity: &Identity) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        version.hash(&mut hasher);
        catalog.generation().hash(&mut hasher);
        identity.user.hash(&mut hasher);
        identity.roles.hash(&mut hasher);
        identity.attributes.hash(&mut hasher);
        hasher.finish()
    }

    pub(crate) fn new(
        key: u64,
        governance: Arc<Governance>,
        catalog: Arc<Catalog>,
        identity: &Identity,
    ) -> Access {
        let mut principals = vec![identity.user.clone()];
        principals.extend(identity.roles.iter().cloned());
        let effective = governance.effective_roles(identity);
        let protected = governance.protected_settings(&effective);
        Access {
            key,
            governance,
            catalog,
            identity: identity.clone(),
            principals,
            effective,
            protected,
            grants: Mutex::new(HashMap::new()),
            wildcard: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            views: Mutex::new(HashMap::new()),
            parsed: Mutex::new(Parsed::default()),
        }
    }

    fn roles_text(&self) -> String {
        let roles: Vec<&str> = self.identity.roles.iter().map(String::as_str).collect();
        if roles.is_empty() {
            format!("user {}", self.identity.user)
        } else {
            format!("role(s) {}", roles.join(", "))
        }
    }

    fn applies(&self, roles: &[String]) -> bool {
        roles.iter().any(|role| self.effective.contains(role))
    }

    /// Whether any principal of the identity is granted `act` on `object`.
    fn enforce(&self, object: &str, act: &str) -> Result<bool, Denial> {
        let attributes = self
            .governance
            .attributes
            .iter()
            .filter_map(|(name, kind)| {
                let text = if name == "user" {
                    Some(self.identity.user.as_str())
                } else {
                    self.identity.attributes.get(name).map(String::as_str)
                };
                text.and_then(|text| Value::typed(text, *kind))
                    .map(|value| (name.as_str(), value))
            })
            .collect::<std::collections::BTreeMap<_, _>>();
        let mut subject = Subject {
            name: "",
            user: &self.identity.user,
            attributes,
        };
        for principal in &self.principals {
            subject.name = principal;
            match self.governance.enforcer.enforce(&subject, object, act) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%object, act, %error, "casbin evaluation failed; denying");
                    return Err(deny(
                        format!("the policy could not be evaluated for {object}"),
                        "policy.csv",
                    ));
                }
            }
        }
        Ok(false)
    }

    fn granted(&self, relation: &Arc<Relation>, act: Act) -> Result<(), Denial> {
        let key = (Arc::as_ptr(relation) as usize, act);
        if let Some(granted) = self.grants.lock().get(&key).copied() {
            return if granted {
                Ok(())
            } else {
                Err(self.not_granted(relation, act))
            };
        }
        let granted = self.enforce(&format!("table:{}", relation.qualified()), act.as_str())?;
        self.grants.lock().insert(key, granted);
        if granted {
            Ok(())
        } else {
            Err(self.not_granted(relation, act))
        }
    }

    /// Whether the identity is granted `act` on every object (a `*` object in
    /// policy.csv): such an identity may also use relations and functions the catalog
    /// snapshot does not know yet (just created, before the refresh), since nothing
    /// could restrict them.
    fn unrestricted(&self, act: &'static str) -> Result<bool, Denial> {
        let key = ("*".to_string(), act);
        if let Some(granted) = self.wildcard.lock().get(&key).copied() {
            return Ok(granted);
        }
        let granted = self.enforce("*", act)?;
        self.wildcard.lock().insert(key, granted);
        Ok(granted)
    }

    fn not_granted(&self, relation: &Relation, act: Act) -> Denial {
        let verb = match act {
            Act::Select => "select from",
            Act::Insert => "insert into",
            Act::Update => "update",
            Act::Delete => "delete from",
            Act::Alter => "change or lock",
        };
        deny(
            format!(
                "{} may not {verb} {}",
                self.roles_text(),
                relation.qualified()
            ),
            "policy.csv",
        )
    }

    fn resolve(&self, parts: &[String]) -> Result<Arc<Relation>, Denial> {
        self.catalog
            .resolve(parts, &self.governance.search_path)
            .cloned()
            .ok_or_else(|| {
                deny(
                    format!(
                        "relation {} is not known to the policy (unknown relations are refused)",
                        parts.join(".")
                    ),
                    "catalog",
                )
            })
    }

    /// Whether the relation is governed at all: user relations and the system
    /// relations that expose data; the rest of the system catalog is open.
    fn governed(relation: &Relation) -> bool {
        !relation.is_system() || GOVERNED_SYSTEM_RELATIONS.contains(&relation.name.as_str())
    }

    fn native(&self, relation: &Relation) -> bool {
        self.governance.native.iter().any(|rule| {
            rule.schema == relation.schema
                && rule.table == relation.name
                && self.applies(&rule.roles)
        })
    }

    fn view(&self, relation: &Arc<Relation>, only: bool) -> Result<Arc<View>, Denial> {
        let key = (Arc::as_ptr(relation) as usize, only);
        if let Some(view) = self.views.lock().get(&key) {
            return view.clone();
        }
        let view = self.build_view(relation, only).map(Arc::new);
        self.views.lock().insert(key, view.clone());
        view
    }

    fn build_view(&self, relation: &Relation, only: bool) -> Result<View, Denial> {
        // Under native row-level security the database filters the rows; masks are
        // still applied here, by substitution.
        let native = self.native(relation);
        let mut rules = Vec::new();
        // Row filters of every role the identity holds, ORed.
        let mut filters = Vec::new();
        let mut missing: Option<(String, usize)> = None;
        let mut filter_columns = BTreeSet::new();
        for rule in self.governance.filters.iter().filter(|_| !native) {
            if rule.schema == relation.schema
                && rule.table == relation.name
                && self.applies(&rule.roles)
            {
                // A filter whose attribute the user lacks grants no rows; the others
                // still apply (a user with several roles sees the union). Only when no
                // filter can be rendered at all is the read refused, so the user learns
                // which attribute is missing.
                let sql = match rule.filter.render(&self.identity) {
                    Ok(sql) => sql,
                    Err(attribute) => {
                        missing.get_or_insert((attribute, rule.line));
                        continue;
                    }
                };
                filters.push(format!("({sql})"));
                filter_columns.extend(rule.columns.iter().cloned());
                rules.push(format!("rules.toml:{}", rule.line));
            }
        }
        if let (true, Some((attribute, line))) = (filters.is_empty(), missing) {
            return Err(deny(
                format!(
                    "the row filter on {} needs attribute {attribute}, which user {} does not have",
                    relation.qualified(),
                    self.identity.user
                ),
                &format!("rules.toml:{line}"),
            ));
        }
        let mut items = Vec::with_capacity(relation.columns.len());
        let mut masked = Vec::new();
        for column in &relation.columns {
            let Some(class) =
                self.governance
                    .class_of(&relation.schema, &relation.name, &column.name)
            else {
                items.push(quoted(&column.name));
                continue;
            };
            let (mask, line) = self.mask_for(class);
            if *mask != Mask::Clear {
                masked.push(column.name.clone());
                rules.push(
                    line.map_or_else(|| "default-mask".to_string(), |l| format!("rules.toml:{l}")),
                );
            }
            let item = mask
                .select_item(
                    column,
                    self.governance.pseudonym_key.as_deref().map(Vec::as_slice),
                )
                .map_err(|message| {
                    deny(
                        message,
                        &line.map_or_else(
                            || "default-mask".to_string(),
                            |l| format!("rules.toml:{l}"),
                        ),
                    )
                })?;
            items.push(item);
        }
        if filters.is_empty() && masked.is_empty() {
            return Ok(View::Open);
        }
        rules.sort();
        rules.dedup();
        let filter = (!filters.is_empty()).then(|| filters.join(" OR "));
        let sql = format!(
            "SELECT {} FROM {}{}.{}{}",
            if items.is_empty() {
                "*".to_string()
            } else {
                items.join(", ")
            },
            if only { "ONLY " } else { "" },
            quoted(&relation.schema),
            quoted(&relation.name),
            filter
                .as_ref()
                .map(|f| format!(" WHERE {f}"))
                .unwrap_or_default()
        );
        // The view's query must print as it parses, alone and in FROM: its text is
        // spliced into rewritten statements that are not parsed again (see
        // `engine::rewrite`).
        let text = match crate::analysis::parse(&sql).ok().and_then(|mut s| s.pop()) {
            Some(Statement::Query(query)) if prints_as_parsed(&query) => query.to_string(),
            _ => {
                return Err(deny(
                    format!(
                        "the policy's view of {} does not parse",
                        relation.qualified()
                    ),
                    &rules.join(", "),
                ));
            }
        };
        Ok(View::Derived {
            text: text.into(),
            filter,
            filter_columns: filter_columns.into_iter().collect(),
            masked,
            rule: rules.join(", "),
        })
    }

    /// The mask for a class: `clear` if any applicable rule says so, else the most
    /// specific applicable rule (first in file order), else `null`.
    fn mask_for(&self, class: &str) -> (&Mask, Option<usize>) {
        static NULL: Mask = Mask::Null;
        let mut best: Option<(u8, &crate::governance::MaskRule)> = None;
        for rule in &self.governance.masks {
            let Some(specificity) = rule.specificity(class) else {
                continue;
            };
            if !self.applies(&rule.roles) {
                continue;
            }
            if rule.mask == Mask::Clear {
                return (&rule.mask, Some(rule.line));
            }
            if best.is_none_or(|(s, _)| specificity > s) {
                best = Some((specificity, rule));
            }
        }
        match best {
            Some((_, rule)) => (&rule.mask, Some(rule.line)),
            None => (&NULL, None),
        }
    }

    /// Whether every reference of `census` is open for this identity (granted, with
    /// nothing to rewrite): then the statement is forwarded as analysed. `Err` when a
    /// reference is refused outright.
    pub(crate) fn open(&self, census: &Census) -> Result<bool, Denial> {
        let mut resolver = self.resolver();
        let mut open = true;
        for (parts, only) in &census.reads {
            if let Some(View::Derived { .. }) = self.read_view(parts, *only)?.as_deref() {
                open = false;
            }
        }
        for (parts, act) in &census.targets {
            if let Some((_, view)) = self.target_view(parts, *act)? {
                open &= matches!(*view, View::Open);
            }
        }
        for parts in &census.others {
            resolver.other(parts.as_deref())?;
        }
        for parts in &census.functions {
            resolver.function(parts.as_deref())?;
        }
        for setting in &census.settings {
            self.may_change(setting.as_deref())?;
        }
        Ok(open)
    }

    /// How a read of `parts` looks: `None` when it is read as it is without a view
    /// (system relations; unknown ones for an unrestricted identity).
    fn read_view(&self, parts: &[String], only: bool) -> Result<Option<Arc<View>>, Denial> {
        let relation = match self.resolve(parts) {
            Ok(relation) => relation,
            Err(_) if self.unrestricted(Act::Select.as_str())? => return Ok(None),
            Err(denial) => return Err(denial),
        };
        if !Access::governed(&relation) {
            return Ok(None);
        }
        self.granted(&relation, Act::Select)?;
        self.view(&relation, only).map(Some)
    }

    /// The relation and view of a write target, `None` when nothing constrains it.
    fn target_view(&self, parts: &[String], act: Act) -> Result<Option<Target>, Denial> {
        let relation = match self.resolve(parts) {
            Ok(relation) => relation,
            Err(_) if self.unrestricted(act.as_str())? => return Ok(None),
            Err(denial) => return Err(denial),
        };
        self.granted(&relation, act)?;
        if !Access::governed(&relation) {
            return Ok(None);
        }
        let view = self.view(&relation, false)?;
        Ok(Some((relation, view)))
    }

    /// Refuses a change of a setting that native row-level security reads for this
    /// identity (`None`: a change of any setting, such as `RESET ALL`). The proxy set
    /// it for the session; letting the client change it would hand the client the
    /// database's row filter.
    fn may_change(&self, setting: Option<&str>) -> Result<(), Denial> {
        let hit = self
            .protected
            .iter()
            .find(|protected| setting.is_none_or(|name| protected.name.eq_ignore_ascii_case(name)));
        let Some(protected) = hit else {
            return Ok(());
        };
        let what = match setting {
            Some(_) => format!("may not change setting {}", protected.name),
            None => format!(
                "may not run a statement that could change any setting, such as setting {}",
                protected.name
            ),
        };
        Err(deny(
            format!(
                "{} {what}: the proxy sets it for native row-level security on {}",
                self.roles_text(),
                protected.table
            ),
            &format!("rules.toml:{}", protected.line),
        ))
    }

    /// A resolver that rewrites for this identity.
    pub(crate) fn resolver(&self) -> Resolver<'_> {
        Resolver {
            access: self,
            views: Vec::new(),
        }
    }
}

/// Whether `query` prints as it parses, alone and as a derived table in FROM.
fn prints_as_parsed(query: &Query) -> bool {
    let text = query.to_string();
    let alone = crate::analysis::parse(&text).is_ok_and(
        |again| matches!(again.as_slice(), [Statement::Query(again)] if **again == *query),
    );
    let derived = || {
        let Ok(mut again) = crate::analysis::parse(&format!("SELECT * FROM ({text}) AS v")) else {
            return false;
        };
        let Some(Statement::Query(outer)) = again.pop().filter(|_| again.is_empty()) else {
            return false;
        };
        let sqlparser::ast::SetExpr::Select(select) = *outer.body else {
            return false;
        };
        matches!(
            select.from.as_slice(),
            [sqlparser::ast::TableWithJoins {
                relation: sqlparser::ast::TableFactor::Derived { subquery, .. },
                joins,
            }] if joins.is_empty() && **subquery == *query
        )
    };
    alone && derived()
}

/// [`Resolve`] for one identity.
///
/// A read through a view is substituted by a placeholder derived table,
/// `(SELECT portcullis_view_<nonce>_<k>)`, and the view's text is spliced in place of
/// the placeholder's once the statement is printed (see [`Resolver::splice`]): the
/// view's tree is neither cloned nor printed again.
pub(crate) struct Resolver<'a> {
    access: &'a Access,
    /// The placeholders handed out, in order, each with its view's text.
    views: Vec<(String, Arc<str>)>,
}

/// The name placeholders are built from: `portcullis_view_`, then 32 hex digits random
/// per process, so no statement text holds one but by a 128-bit guess (and
/// [`Resolver::splice`] refuses a text holding one twice anyway).
fn placeholder_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        use std::hash::BuildHasher;
        let random = || std::collections::hash_map::RandomState::new().hash_one(0u8);
        format!("portcullis_view_{:016x}{:016x}_", random(), random())
    })
}

impl Resolver<'_> {
    /// A placeholder query standing for the view `text`, remembered for
    /// [`Resolver::splice`].
    fn placeholder(&mut self, text: &Arc<str>) -> Option<Box<Query>> {
        static TEMPLATE: std::sync::OnceLock<Option<Box<Query>>> = std::sync::OnceLock::new();
        let name = format!("{}{}", placeholder_prefix(), self.views.len());
        self.views.push((name.clone(), Arc::clone(text)));
        let template = TEMPLATE.get_or_init(|| {
            match crate::analysis::parse("SELECT portcullis_view")
                .ok()?
                .pop()?
            {
                Statement::Query(query) => Some(query),
                _ => None,
            }
        });
        let mut query = template.clone()?;
        let sqlparser::ast::SetExpr::Select(select) = query.body.as_mut() else {
            return None;
        };
        let Some(sqlparser::ast::SelectItem::UnnamedExpr(Expr::Identifier(ident))) =
            select.projection.first_mut()
        else {
            return None;
        };
        ident.value = name;
        Some(query)
    }

    /// `printed` (statements printed with placeholders) with each placeholder's
    /// printed form replaced by its view's text in parentheses, which is exactly what
    /// printing the statements with the views' trees in place would give: a derived
    /// table prints as `(`, its query, `)`, whatever stands around it. `None` unless
    /// every placeholder occurs exactly once in `printed`: once is the placeholder
    /// itself, so nothing in the client's text (a literal, an identifier, a comment
    /// would not print) can stand in for one. The printed form of a placeholder not
    /// handed out is left as it is.
    ///
    /// Why the spliced text means the spliced tree without parsing it again: the
    /// printed statement parses back to its tree (as analysed, or checked again after
    /// a write was rebuilt), so each placeholder stands where the parser reads a
    /// parenthesized derived table. There the parser reads a whole query up to the
    /// matching `)` whatever surrounds it, and the view's text was proven to parse
    /// back to the view's query, alone and as a derived table (see
    /// `prints_as_parsed`), so the spliced text parses back to the statement with the
    /// views in place.
    pub(crate) fn splice(&self, printed: &str) -> Option<String> {
        static OPENING: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let opening = OPENING.get_or_init(|| format!("(SELECT {}", placeholder_prefix()));
        let extra: usize = self.views.iter().map(|(_, text)| text.len() + 2).sum();
        let mut spliced = String::with_capacity(printed.len() + extra);
        let mut seen = vec![false; self.views.len()];
        let mut rest = printed;
        // One pass over the text; what reads as no placeholder handed out stays as it is.
        while let Some(at) = rest.find(opening.as_str()) {
            let after = rest.get(at + opening.len()..)?;
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let index = after
                .get(..digits)
                .and_then(|digits| digits.parse::<usize>().ok())
                .filter(|&index| index < self.views.len())
                .filter(|_| after.as_bytes().get(digits) == Some(&b')'));
            let Some(index) = index else {
                spliced.push_str(rest.get(..at + opening.len())?);
                rest = after;
                continue;
            };
            let seen = seen.get_mut(index)?;
            if std::mem::replace(seen, true) {
                return None;
            }
            let (_, text) = self.views.get(index)?;
            spliced.push_str(rest.get(..at)?);
            spliced.push('(');
            spliced.push_str(text);
            spliced.push(')');
            rest = after.get(digits + 1..)?;
        }
        spliced.push_str(rest);
        seen.iter().all(|&seen| seen).then_some(spliced)
    }
}

impl Resolve for Resolver<'_> {
    fn read(&mut self, parts: &[String], only: bool) -> Result<Read, Denial> {
        match self.access.read_view(parts, only)?.as_deref() {
            None | Some(View::Open) => Ok(Read::Keep),
            Some(View::Derived { text, .. }) => self
                .placeholder(text)
                .map(Read::Substitute)
                .ok_or_else(|| crate::rewrite::write::refuse("this statement (no placeholder)")),
        }
    }

    fn target(&mut self, parts: &[String], act: Act) -> Result<Option<TargetRule>, Denial> {
        let Some((relation, view)) = self.access.target_view(parts, act)? else {
            return Ok(None);
        };
        match &*view {
            View::Open => Ok(None),
            View::Derived {
                filter,
                filter_columns,
                masked,
                rule,
                ..
            } => Ok(Some(TargetRule {
                relation: relation.qualified(),
                filter: filter.clone(),
                filter_columns: filter_columns.clone(),
                masked: masked.clone(),
                columns: relation
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.type_name.clone()))
                    .collect(),
                rule: rule.clone(),
            })),
        }
    }

    fn expr(&mut self, sql: &str) -> Result<Expr, Denial> {
        remembered(
            &self.access.parsed,
            |p| &mut p.exprs,
            sql,
            crate::rewrite::write::parse_expr,
        )
    }

    fn sampled(
        &mut self,
        view: Box<Query>,
        sample: sqlparser::ast::TableSampleKind,
    ) -> Result<Box<Query>, Denial> {
        let refuse = || crate::rewrite::write::refuse("TABLESAMPLE on this table");
        // `view` is the placeholder `read` handed out last; its view is rebuilt with the
        // sample and handed out under a new placeholder.
        drop(view);
        let (_, text) = self.views.pop().ok_or_else(refuse)?;
        let mut query = self.query(&text)?;
        let sqlparser::ast::SetExpr::Select(select) = query.body.as_mut() else {
            return Err(refuse());
        };
        let [sqlparser::ast::TableWithJoins { relation, joins }] = select.from.as_mut_slice()
        else {
            return Err(refuse());
        };
        let sqlparser::ast::TableFactor::Table {
            sample: slot @ None,
            ..
        } = relation
        else {
            return Err(refuse());
        };
        if !joins.is_empty() {
            return Err(refuse());
        }
        *slot = Some(sample);
        // The splice needs the new text proven like every view's (see `splice`).
        if !prints_as_parsed(&query) {
            return Err(refuse());
        }
        self.placeholder(&Arc::from(query.to_string()))
            .ok_or_else(refuse)
    }

    fn query(&mut self, sql: &str) -> Result<Box<Query>, Denial> {
        remembered(
            &self.access.parsed,
            |p| &mut p.queries,
            sql,
            crate::rewrite::write::parse_query,
        )
    }

    fn data_type(&mut self, type_name: &str) -> Result<DataType, Denial> {
        remembered(
            &self.access.parsed,
            |p| &mut p.types,
            type_name,
            crate::rewrite::write::parse_data_type,
        )
    }

    fn other(&mut self, parts: Option<&[String]>) -> Result<(), Denial> {
        let Some(parts) = parts else {
            return Err(deny(
                "a relation name that is not plain identifiers".to_string(),
                "catalog",
            ));
        };
        // A name the catalog does not know is being created (or does not exist, which
        // the database reports); the statement's class decides whether that is allowed.
        match self
            .access
            .catalog
            .resolve(parts, &self.access.governance.search_path)
        {
            None => Ok(()),
            Some(relation) if !Access::governed(relation) => Ok(()),
            Some(relation) => self.access.granted(relation, Act::Alter),
        }
    }

    fn function(&mut self, parts: Option<&[String]>) -> Result<(), Denial> {
        let Some(parts) = parts else {
            return Err(deny(
                "a function name that is not plain identifiers".to_string(),
                "catalog",
            ));
        };
        let name = parts.join(".");
        if let Some(allowed) = self.access.functions.lock().get(&name).copied() {
            return if allowed {
                Ok(())
            } else {
                Err(deny(
                    format!("{} may not call function {name}", self.access.roles_text()),
                    "policy.csv",
                ))
            };
        }
        let schema = self
            .access
            .catalog
            .resolve_function(parts, &self.access.governance.search_path)
            .map(str::to_string);
        let allowed = match schema.as_deref() {
            None if self.access.unrestricted("execute")? => true,
            None => {
                return Err(deny(
                    format!(
                        "function {name} is not known to the policy (unknown functions are refused)"
                    ),
                    "catalog",
                ));
            }
            Some("pg_catalog" | "information_schema" | crate::support::SUPPORT_SCHEMA) => true,
            Some(schema) => {
                let function = parts.last().map(String::as_str).unwrap_or_default();
                self.access
                    .enforce(&format!("function:{schema}.{function}"), "execute")?
            }
        };
        self.access.functions.lock().insert(name.clone(), allowed);
        if allowed {
            Ok(())
        } else {
            Err(deny(
                format!("{} may not call function {name}", self.access.roles_text()),
                "policy.csv",
            ))
        }
    }
}

#[cfg(test)]
#[path = "../tests/fixtures/mod.rs"]
mod fixtures;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::analysis::{self, Outcome};
    use crate::config::PolicyConfig;
    use crate::decision::Decision;
    use crate::engine::Engine;
    use crate::policy::Policy;
    use crate::rewrite::Walker;

    use super::fixtures;

    fn policy() -> Policy {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        let governance = Governance::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        let config: PolicyConfig =
            toml::from_str("[roles.support]\nallow = [\"read\", \"write\"]\n")
                .unwrap_or_else(|e| panic!("{e}"));
        Policy::compile_governed(&config, governance).unwrap_or_else(|e| panic!("{e}"))
    }

    fn support(tenant: &str) -> Identity {
        let mut identity = Identity::new("support_acme", ["support"]);
        identity.attributes.insert("tenant".into(), tenant.into());
        identity
    }

    fn forwarded(decision: Decision) -> Result<String, (String, String)> {
        match decision {
            Decision::Allow { sql, .. } => Ok(sql.to_string()),
            Decision::Deny(denial) => Err((denial.sqlstate.to_string(), denial.rule)),
        }
    }

    /// Resolves like [`Resolver`], but substitutes each view's tree (parsed from its
    /// text) rather than a placeholder: the rewrite as it was before splicing.
    struct Trees<'a>(Resolver<'a>);

    impl Resolve for Trees<'_> {
        fn read(&mut self, parts: &[String], only: bool) -> Result<Read, Denial> {
            match self.0.read(parts, only)? {
                Read::Keep => Ok(Read::Keep),
                Read::Substitute(_) => {
                    let text = self.0.views.last().map(|(_, text)| text.to_string());
                    match analysis::parse(&text.unwrap_or_default()).map(|mut s| s.pop()) {
                        Ok(Some(Statement::Query(query))) => Ok(Read::Substitute(query)),
                        _ => panic!("a view's text does not parse"),
                    }
                }
            }
        }
        fn target(&mut self, parts: &[String], act: Act) -> Result<Option<TargetRule>, Denial> {
            self.0.target(parts, act)
        }
        fn other(&mut self, parts: Option<&[String]>) -> Result<(), Denial> {
            self.0.other(parts)
        }
        fn function(&mut self, parts: Option<&[String]>) -> Result<(), Denial> {
            self.0.function(parts)
        }
    }

    #[test]
    fn spliced_reads_print_as_the_views_trees_would() {
        let catalog = fixtures::quickstart_catalog().with_function("pg_catalog", "max");
        let (policy, catalog) = (policy(), Arc::new(catalog));
        let governance = policy.governance().cloned().unwrap_or_else(|| panic!());
        let identity = support("1");
        let access = Access::new(0, governance, Arc::clone(&catalog), &identity);
        for sql in [
            "SELECT id, name, email, ssn, card_number FROM customers WHERE id = $1",
            "SELECT c.name, o.total FROM orders o JOIN customers c ON c.id = o.customer_id",
            "SELECT * FROM customers; SELECT * FROM orders, public.customers",
            "WITH recent AS (SELECT * FROM orders) SELECT * FROM recent, customers",
            "SELECT * FROM customers UNION ALL SELECT * FROM customers",
            "SELECT (SELECT max(total) FROM orders WHERE customer_id = c.id) FROM customers c",
            "SELECT * FROM (SELECT * FROM (SELECT name FROM customers) AS a) AS b",
            "SELECT * FROM ONLY customers WHERE name = '(SELECT 1)'",
            "UPDATE orders SET status = $1 WHERE customer_id IN (SELECT id FROM customers)",
            "INSERT INTO orders (tenant_id, customer_id, total, status) SELECT tenant_id, id, 0, 'x' FROM customers",
        ] {
            let Outcome::Statements { statements, .. } = analysis::analyze(sql).outcome else {
                panic!("{sql} does not parse");
            };
            let mut trees = Trees(access.resolver());
            let old: Vec<String> = statements
                .iter()
                .map(|statement| {
                    let mut ast = statement.ast.clone();
                    Walker::new(&mut trees)
                        .walk(&mut ast)
                        .unwrap_or_else(|d| panic!("{sql}: {d:?}"));
                    ast.to_string()
                })
                .collect();
            let engine = Engine::default();
            let new = forwarded(engine.decide(&policy, &catalog, &identity, sql));
            assert_eq!(new, Ok(old.join("; ")), "{sql}");
        }
    }

    #[test]
    fn a_client_text_holding_a_placeholder_smuggles_nothing() {
        let (policy, catalog) = (policy(), Arc::new(fixtures::quickstart_catalog()));
        let identity = support("1");
        let prefix = placeholder_prefix();
        let refused = Err(("42601".to_string(), "rewrite".to_string()));
        // The first view's placeholder is `<prefix>0`: a text holding its printed form
        // anywhere (literal, quoted identifier, a subquery of its own) is refused.
        for sql in [
            format!("SELECT '(SELECT {prefix}0)' AS x, name FROM customers"),
            format!("SELECT \"(SELECT {prefix}0)\" FROM customers"),
            format!("SELECT * FROM (SELECT {prefix}0) AS x, customers"),
            format!("SELECT * FROM customers WHERE name = 'a(SELECT {prefix}0)(SELECT {prefix}0)'"),
            format!(
                "UPDATE orders SET status = '(SELECT {prefix}0)' WHERE customer_id IN (SELECT id FROM customers)"
            ),
        ] {
            let engine = Engine::default();
            let decided = forwarded(engine.decide(&policy, &catalog, &identity, &sql));
            assert_eq!(decided, refused, "{sql}");
        }
        // The form of a placeholder not handed out is left as the client wrote it, and
        // the view is spliced once, where it belongs.
        let sql = format!("SELECT name FROM customers WHERE name = '(SELECT {prefix}1)'");
        let engine = Engine::default();
        let text = forwarded(engine.decide(&policy, &catalog, &identity, &sql))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(text.matches(prefix).count(), 1, "{text}");
        assert!(
            text.ends_with(&format!("AS customers WHERE name = '(SELECT {prefix}1)'")),
            "{text}"
        );
        assert_eq!(
            text.matches("FROM \"public\".\"customers\"").count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn splice_refuses_missing_and_repeated_placeholders() {
        let (policy, catalog) = (policy(), Arc::new(fixtures::quickstart_catalog()));
        let governance = policy.governance().cloned().unwrap_or_else(|| panic!());
        let access = Access::new(0, governance, catalog, &support("1"));
        let mut resolver = access.resolver();
        let view: Arc<str> = Arc::from("SELECT 1");
        assert!(resolver.placeholder(&view).is_some());
        let needle = format!("(SELECT {}0)", placeholder_prefix());
        assert_eq!(resolver.splice("SELECT 2"), None);
        assert_eq!(resolver.splice(&format!("{needle} {needle}")), None);
        let prefix = placeholder_prefix();
        // The form of a placeholder not handed out is not one: it stays as written.
        for stray in [
            format!("(SELECT {prefix}1)"),
            format!("(SELECT {prefix})"),
            format!("(SELECT {prefix}0x)"),
        ] {
            assert_eq!(
                resolver.splice(&format!("{stray} {needle} {stray}")),
                Some(format!("{stray} (SELECT 1) {stray}")),
                "{stray}"
            );
        }
        assert_eq!(
            resolver.splice(&format!("SELECT * FROM {needle} AS t")),
            Some("SELECT * FROM (SELECT 1) AS t".to_string())
        );
        // Placeholders splice wherever they stand, in any order.
        let second: Arc<str> = Arc::from("SELECT 2");
        assert!(resolver.placeholder(&second).is_some());
        let other = format!("(SELECT {prefix}1)");
        assert_eq!(
            resolver.splice(&format!("SELECT * FROM {other} a, {needle} b")),
            Some("SELECT * FROM (SELECT 2) a, (SELECT 1) b".to_string())
        );
    }

    #[test]
    fn remembered_parses_never_cross_identities() {
        let (policy, catalog) = (policy(), Arc::new(fixtures::quickstart_catalog()));
        let engine = Engine::default();
        for (tenant, other) in [("1", "2"), ("2", "1"), ("1", "2")] {
            let identity = support(tenant);
            let rewrite = |sql: &str| {
                forwarded(engine.decide(&policy, &catalog, &identity, sql))
                    .unwrap_or_else(|e| panic!("{e:?}"))
            };
            let insert = rewrite(
                "INSERT INTO orders (tenant_id, customer_id, total, status) VALUES ($1, $2, $3, $4)",
            );
            assert!(
                insert.contains(&format!("row_check(((tenant_id = '{tenant}'))")),
                "{insert}"
            );
            assert!(!insert.contains(&format!("'{other}'")), "{insert}");
            let update = rewrite("UPDATE orders SET tenant_id = $1 WHERE id = $2");
            assert!(
                update.contains(&format!("(CAST(($1) AS INTEGER)) = '{tenant}'")),
                "{update}"
            );
            assert!(
                update.ends_with(&format!("((orders.tenant_id = '{tenant}'))")),
                "{update}"
            );
            assert!(!update.contains(&format!("'{other}'")), "{update}");
        }
    }

    #[test]
    fn column_types_must_read_as_one_cast() {
        use crate::rewrite::write::parse_data_type;
        let numeric = parse_data_type("numeric(12,2)").map(|t| t.to_string());
        assert_eq!(numeric.ok().as_deref(), Some("NUMERIC(12,2)"));
        assert!(parse_data_type("integer) OR (1 = 1").is_err());
        assert!(parse_data_type("integer AS").is_err());
    }
}
