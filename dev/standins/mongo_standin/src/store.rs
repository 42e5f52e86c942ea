//! Documents, for the data migration's embedded MongoDB: collections held in memory and,
//! with `--dbpath DIR`, kept in DIR/<db>/<collection>.bson (the documents one after
//! another, as mongodump writes them) and DIR/<db>/<collection>.indexes.bson, rewritten
//! whole (through a temporary file and a rename) after every write. Written from
//! MongoDB's command documentation: insert, find (an empty filter or top-level
//! equality), getMore, killCursors, count, listCollections, listIndexes,
//! createIndexes, create (capped collections and views), drop, dropDatabase, dbHash.
//! A collection's `create` options are kept in DIR/<db>/<collection>.options.bson. A
//! view is counted through its pipeline when every stage keeps the number of documents
//! (`$project`, `$addFields`, `$set`, `$sort`); other stages, and reading a view's
//! documents, and a view on a view, are refused. Capped collections are not trimmed to
//! their size. dbHash leaves views out and hashes a collection's documents in `_id`
//! order, except, in the current mode (as MongoDB does from 4.0 on), a capped
//! collection's: in their storage (insertion) order, and listed under `capped`.
//! Anything else a filter or command asks for is refused, never ignored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};

use bson::{doc, Bson, Document};
use md5::Digest;

use crate::{fail, CmdError};

/// The most a reply batch holds, as MongoDB's 16 MB message limit asks.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

#[derive(Default, Clone)]
struct Collection {
    docs: Vec<Document>,
    indexes: Vec<Document>,
    /// What `create` was given (`capped`, `size`, `max`, or `viewOn`, `pipeline`).
    options: Document,
}

impl Collection {
    fn view_on(&self) -> Option<&str> {
        self.options.get_str("viewOn").ok()
    }

    fn capped(&self) -> bool {
        self.options.get_bool("capped") == Ok(true)
    }
}

/// The view stages the stand-in can count through: those that keep every document.
const COUNTABLE_STAGES: [&str; 4] = ["$project", "$addFields", "$set", "$sort"];

fn is_view(c: &Collection, db: &str, name: &str) -> Result<(), CmdError> {
    match c.view_on() {
        Some(_) => Err(fail(
            166,
            "CommandNotSupportedOnView",
            format!("Namespace {db}.{name} is a view, not a collection"),
        )),
        None => Ok(()),
    }
}

pub(crate) struct Store {
    /// dbHash as MongoDB 4.0 and later: capped collections listed under `capped` and
    /// hashed in storage order.
    pub capped_in_storage_order: bool,
    dir: Option<PathBuf>,
    dbs: Mutex<BTreeMap<String, BTreeMap<String, Collection>>>,
    cursors: Mutex<HashMap<i64, (String, VecDeque<Document>)>>,
    next_cursor: AtomicI64,
}

fn id_index(ns: &str) -> Document {
    doc! {"v": 2, "key": {"_id": 1}, "name": "_id_", "ns": ns}
}

fn read_docs(p: &std::path::Path) -> std::io::Result<Vec<Document>> {
    let bytes = std::fs::read(p)?;
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let len = usize::try_from(len).unwrap_or(0);
        let Some(slice) = bytes.get(at..at + len) else {
            break;
        };
        match Document::from_reader(slice) {
            Ok(d) => out.push(d),
            Err(_) => break,
        }
        at += len;
    }
    Ok(out)
}

fn write_docs(p: &std::path::Path, docs: &[Document]) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    for d in docs {
        d.to_writer(&mut bytes).map_err(std::io::Error::other)?;
    }
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, p)
}

/// A filter this store can apply: empty, or top-level fields each equal to a value.
fn matches(d: &Document, filter: &Document) -> Result<bool, CmdError> {
    for (k, v) in filter {
        if k.starts_with('$')
            || matches!(v, Bson::Document(sub) if sub.keys().any(|s| s.starts_with('$')))
        {
            return Err(fail(
                2,
                "BadValue",
                format!("the stand-in supports only equality on top-level fields, not {k}: {v}"),
            ));
        }
        if d.get(k) != Some(v) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The order of `_id`s in dbHash: the index order for the types CircleCI's documents
/// use as ids (numbers, strings, ObjectIds), then the raw bytes.
fn id_key(d: &Document) -> (u8, f64, String, Vec<u8>) {
    match d.get("_id") {
        Some(Bson::Int32(n)) => (1, *n as f64, String::new(), vec![]),
        Some(Bson::Int64(n)) => (1, *n as f64, String::new(), vec![]),
        Some(Bson::Double(n)) => (1, *n, String::new(), vec![]),
        Some(Bson::String(s)) => (2, 0.0, s.clone(), vec![]),
        Some(Bson::ObjectId(o)) => (4, 0.0, String::new(), o.bytes().to_vec()),
        Some(other) => {
            let mut b = Vec::new();
            let _ = doc! {"k": other.clone()}.to_writer(&mut b);
            (9, 0.0, String::new(), b)
        }
        None => (0, 0.0, String::new(), vec![]),
    }
}

impl Store {
    /// The store, loaded from `dir` when there is one.
    pub(crate) fn open(dir: Option<PathBuf>) -> std::io::Result<Store> {
        let mut dbs: BTreeMap<String, BTreeMap<String, Collection>> = BTreeMap::new();
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)?;
            for db in std::fs::read_dir(dir)? {
                let db = db?;
                if !db.file_type()?.is_dir() {
                    continue;
                }
                let name = db.file_name().to_string_lossy().into_owned();
                for f in std::fs::read_dir(db.path())? {
                    let p = f?.path();
                    let file = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let Some(coll) = file.strip_suffix(".bson") else {
                        continue;
                    };
                    if coll.ends_with(".indexes") || coll.ends_with(".options") {
                        continue;
                    }
                    let mut c = Collection {
                        docs: read_docs(&p)?,
                        indexes: vec![id_index(&format!("{name}.{coll}"))],
                        options: Document::new(),
                    };
                    let opts = db.path().join(format!("{coll}.options.bson"));
                    if opts.exists() {
                        c.options = read_docs(&opts)?.pop().unwrap_or_default();
                    }
                    let idx = db.path().join(format!("{coll}.indexes.bson"));
                    if idx.exists() {
                        c.indexes = read_docs(&idx)?;
                    }
                    dbs.entry(name.clone())
                        .or_default()
                        .insert(coll.to_string(), c);
                }
            }
        }
        Ok(Store {
            capped_in_storage_order: false,
            dir,
            dbs: Mutex::new(dbs),
            cursors: Mutex::new(HashMap::new()),
            next_cursor: AtomicI64::new(1),
        })
    }

    /// Database names and their sizes (the BSON bytes of their documents).
    pub(crate) fn databases(&self) -> Vec<(String, i64)> {
        let dbs = self.dbs.lock().unwrap_or_else(PoisonError::into_inner);
        dbs.iter()
            .map(|(n, colls)| {
                let size = colls
                    .values()
                    .flat_map(|c| c.docs.iter())
                    .map(|d| {
                        bson::to_vec(d).map_or(0, |v| i64::try_from(v.len()).unwrap_or(i64::MAX))
                    })
                    .sum();
                (n.clone(), size)
            })
            .collect()
    }

    fn persist(&self, db: &str, coll: &str, c: Option<&Collection>) -> Result<(), CmdError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let d = dir.join(db);
        let data = d.join(format!("{coll}.bson"));
        let idx = d.join(format!("{coll}.indexes.bson"));
        let opts = d.join(format!("{coll}.options.bson"));
        let r = match c {
            Some(c) => std::fs::create_dir_all(&d)
                .and_then(|_| write_docs(&data, &c.docs))
                .and_then(|_| write_docs(&idx, &c.indexes))
                .and_then(|_| match c.options.is_empty() {
                    true => Ok(()),
                    false => write_docs(&opts, std::slice::from_ref(&c.options)),
                }),
            None => {
                let _ = std::fs::remove_file(&idx);
                let _ = std::fs::remove_file(&opts);
                match std::fs::remove_file(&data) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
        };
        r.map_err(|e| {
            fail(
                1,
                "InternalError",
                format!("writing {}: {e}", data.display()),
            )
        })
    }

    fn cursor_reply(
        &self,
        ns: &str,
        mut docs: VecDeque<Document>,
        first: bool,
        batch: usize,
    ) -> Document {
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(d) = docs.pop_front() {
            bytes += bson::to_vec(&d).map(|v| v.len()).unwrap_or(0);
            out.push(Bson::Document(d));
            if out.len() >= batch || bytes >= BATCH_BYTES {
                break;
            }
        }
        let id = if docs.is_empty() {
            0
        } else {
            let id = self.next_cursor.fetch_add(1, Ordering::Relaxed);
            self.cursors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, (ns.to_string(), docs));
            id
        };
        let key = if first { "firstBatch" } else { "nextBatch" };
        doc! {"cursor": {"id": id, "ns": ns, key: out}}
    }

    /// The document commands; `None` for any other command.
    pub(crate) fn command(
        &self,
        name: &str,
        body: &Document,
        db: &str,
    ) -> Option<Result<Document, CmdError>> {
        let coll = || -> Result<String, CmdError> {
            body.get_str(name)
                .map(str::to_string)
                .map_err(|_| fail(2, "BadValue", format!("{name} needs a collection name")))
        };
        let batch = |b: &Document| -> usize {
            b.get_document("cursor")
                .ok()
                .and_then(|c| {
                    c.get("batchSize")
                        .and_then(Bson::as_i64)
                        .or_else(|| c.get_i32("batchSize").ok().map(i64::from))
                })
                .or_else(|| b.get_i32("batchSize").ok().map(i64::from))
                .or_else(|| b.get_i64("batchSize").ok())
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(101)
        };
        let r = match name {
            "insert" => coll().and_then(|c| {
                let docs = body.get_array("documents").map_err(|_| fail(2, "BadValue", "insert needs documents"))?;
                let mut dbs = self.dbs.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = dbs.entry(db.to_string()).or_default().entry(c.clone()).or_insert_with(|| Collection {
                    docs: vec![],
                    indexes: vec![id_index(&format!("{db}.{c}"))],
                    options: Document::new(),
                });
                is_view(entry, db, &c)?;
                let mut n = 0;
                for d in docs {
                    let Bson::Document(d) = d else { continue };
                    let mut d = d.clone();
                    if !d.contains_key("_id") {
                        let mut with_id = doc! {"_id": bson::oid::ObjectId::new()};
                        with_id.extend(d);
                        d = with_id;
                    }
                    if entry.docs.iter().any(|x| x.get("_id") == d.get("_id")) {
                        return Err(fail(11000, "DuplicateKey", format!("E11000 duplicate key error collection: {db}.{c} index: _id_")));
                    }
                    entry.docs.push(d);
                    n += 1;
                }
                let snapshot = entry.clone();
                drop(dbs);
                self.persist(db, &c, Some(&snapshot))?;
                Ok(doc! {"n": n})
            }),
            "find" => coll().and_then(|c| {
                let filter = body.get_document("filter").cloned().unwrap_or_default();
                for unsupported in ["sort", "projection", "skip", "hint", "min", "max"] {
                    if body.get(unsupported).is_some_and(|v| !matches!(v, Bson::Document(d) if d.is_empty())) {
                        return Err(fail(2, "BadValue", format!("the stand-in's find takes no {unsupported}")));
                    }
                }
                let dbs = self.dbs.lock().unwrap_or_else(PoisonError::into_inner);
                let mut out = VecDeque::new();
                if let Some(col) = dbs.get(db).and_then(|d| d.get(&c)) {
                    if col.view_on().is_some() {
                        return Err(fail(2, "BadValue", format!("the stand-in does not read a view's documents ({db}.{c})")));
                    }
                    for d in &col.docs {
                        if matches(d, &filter)? {
                            out.push_back(d.clone());
                        }
                    }
                }
                drop(dbs);
                if let Some(limit) = body.get("limit").and_then(Bson::as_i64).or_else(|| body.get_i32("limit").ok().map(i64::from)) {
                    if let Some(limit) = usize::try_from(limit).ok().filter(|l| *l > 0) {
                        out.truncate(limit);
                    }
                }
                let b = if body.get("batchSize").is_some() { batch(body) } else { 101 };
                Ok(self.cursor_reply(&format!("{db}.{c}"), out, true, b))
            }),
            "getMore" => {
                let id = body.get_i64("getMore").unwrap_or(0);
                let cursor = self.cursors.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
                match cursor {
                    Some((ns, docs)) => Ok(self.cursor_reply(&ns, docs, false, batch(body))),
                    None => Err(fail(43, "CursorNotFound", format!("cursor id {id} not found"))),
                }
            }
            "killCursors" => {
                let ids: Vec<i64> = body.get_array("cursors").map(|a| a.iter().filter_map(Bson::as_i64).collect()).unwrap_or_default();
                let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
                for id in &ids {
                    cursors.remove(id);
                }
                Ok(doc! {"cursorsKilled": ids, "cursorsNotFound": [], "cursorsAlive": [], "cursorsUnknown": []})
            }
            "count" => coll().and_then(|c| {
                let q = body.get_document("query").cloned().unwrap_or_default();
                let dbs = self.dbs.lock().unwrap_or_else(PoisonError::into_inner);
                let mut n = 0;
                let mut col = dbs.get(db).and_then(|d| d.get(&c));
                if let Some(view) = col.filter(|v| v.view_on().is_some()) {
                    let stages = view.options.get_array("pipeline").cloned().unwrap_or_default();
                    for st in &stages {
                        let op = match st {
                            Bson::Document(d) => d.keys().next().cloned().unwrap_or_default(),
                            _ => String::new(),
                        };
                        if !COUNTABLE_STAGES.contains(&op.as_str()) {
                            return Err(fail(2, "BadValue", format!("the stand-in counts views only through {COUNTABLE_STAGES:?}, not {op}")));
                        }
                    }
                    if !q.is_empty() {
                        return Err(fail(2, "BadValue", "the stand-in counts a view only without a query"));
                    }
                    col = dbs.get(db).and_then(|d| d.get(view.view_on().unwrap_or_default()));
                    if col.is_some_and(|c| c.view_on().is_some()) {
                        return Err(fail(2, "BadValue", "the stand-in does not count a view on a view"));
                    }
                }
                if let Some(col) = col {
                    for d in &col.docs {
                        if matches(d, &q)? {
                            n += 1;
                        }
                    }
                }
                Ok(doc! {"n": n})
            }),
            "listCollections" => {
                let dbs = self.dbs.lock().unwrap_or_else(PoisonError::into_inner);
                let names: VecDeque<Document> = dbs
                    .get(db)
                    .map(|d| {
                        d.iter()
                            .map(|(n, c)| match c.view_on() {
                                Some(_) => doc! {"name": n, "type": "view", "options": c.options.clone(), "info": {"readOnly": true}},
                                None => doc! {"name": n, "type": "collection", "options": c.options.clone(), "info": {"readOnly": false}, "idIndex": id_index(&format!("{db}.{n}"))},
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                drop(dbs);
                Ok(self.cursor_reply(&format!("{db}.$cmd.listCollections"), names, true, batch(body)))
            }
            "listIndexes" => coll().and_then(|c| {
                let dbs = self.dbs.lock().unwrap_or_else(PoisonError::into_inner);
                match dbs.get(db).and_then(|d| d.get(&c)) {
                    Some(col) => {
                        is_view(col, db, &c)?;
                        let idx = col.indexes.iter().cloned().collect();
                        drop(dbs);
                        Ok(self.cursor_reply(&format!("{db}.{c}"), idx, true, batch(body)))
                    }
                    None => Err(fail(26, "NamespaceNotFound", format!("ns does not exist: {db}.{c}"))),
                }
            }),
            "createIndexes" => coll().and_then(|c| {
                let specs = body.get_array("indexes").map_err(|_| fail(2, "BadValue", "createIndexes needs indexes"))?;
                let mut dbs = self.dbs.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = dbs.entry(db.to_string()).or_default().entry(c.clone()).or_insert_with(|| Collection {
                    docs: vec![],
                    indexes: vec![id_index(&format!("{db}.{c}"))],
                    options: Document::new(),
                });
                is_view(entry, db, &c)?;
                let before = count32(entry.indexes.len());
                for s in specs {
                    let Bson::Document(s) = s else { continue };
                    let name = s.get_str("name").unwrap_or_default().to_string();
                    if !entry.indexes.iter().any(|i| i.get_str("name").ok() == Some(name.as_str())) {
                        let mut s = s.clone();
                        s.insert("ns", format!("{db}.{c}"));
                        entry.indexes.push(s);
                    }
                }
                let after = count32(entry.indexes.len());
                let snapshot = entry.clone();
                drop(dbs);
                self.persist(db, &c, Some(&snapshot))?;
                Ok(doc! {"numIndexesBefore": before, "numIndexesAfter": after, "createdCollectionAutomatically": before == 1 && snapshot.docs.is_empty()})
            }),
            "create" => coll().and_then(|c| {
                let mut options = Document::new();
                for (k, v) in body {
                    match k.as_str() {
                        "create" | "lsid" | "writeConcern" | "$clusterTime" | "$readPreference" => {}
                        k if k.starts_with('$') => {}
                        "capped" | "size" | "max" | "viewOn" | "pipeline" => {
                            options.insert(k, v.clone());
                        }
                        other => return Err(fail(2, "BadValue", format!("the stand-in's create takes no {other}"))),
                    }
                }
                if options.contains_key("viewOn") && options.contains_key("capped") {
                    return Err(fail(2, "BadValue", "a view cannot be capped"));
                }
                if options.get_bool("capped") == Ok(true) && !options.contains_key("size") {
                    return Err(fail(72, "InvalidOptions", "the 'size' field is required when 'capped' is true"));
                }
                let mut dbs = self.dbs.lock().unwrap_or_else(PoisonError::into_inner);
                let colls = dbs.entry(db.to_string()).or_default();
                if colls.contains_key(&c) {
                    return Err(fail(48, "NamespaceExists", format!("a collection '{db}.{c}' already exists")));
                }
                let view = options.contains_key("viewOn");
                let col = Collection {
                    docs: vec![],
                    indexes: if view { vec![] } else { vec![id_index(&format!("{db}.{c}"))] },
                    options,
                };
                colls.insert(c.clone(), col.clone());
                drop(dbs);
                self.persist(db, &c, Some(&col))?;
                Ok(doc! {})
            }),
            "drop" => coll().and_then(|c| {
                let removed = self.dbs.lock().unwrap_or_else(PoisonError::into_inner).get_mut(db).and_then(|d| d.remove(&c));
                match removed {
                    Some(_) => {
                        self.persist(db, &c, None)?;
                        Ok(doc! {"ns": format!("{db}.{c}"), "nIndexesWas": 1})
                    }
                    None => Err(fail(26, "NamespaceNotFound", "ns not found")),
                }
            }),
            "dropDatabase" => {
                let removed = self.dbs.lock().unwrap_or_else(PoisonError::into_inner).remove(db);
                for c in removed.map(|d| d.into_keys().collect::<Vec<_>>()).unwrap_or_default() {
                    if let Err(e) = self.persist(db, &c, None) {
                        return Some(Err(e));
                    }
                }
                Ok(doc! {"dropped": db})
            }
            "dbHash" => {
                let dbs = self.dbs.lock().unwrap_or_else(PoisonError::into_inner);
                let mut all = md5::Md5::new();
                let mut colls = Document::new();
                let mut capped: Vec<String> = Vec::new();
                if let Some(d) = dbs.get(db) {
                    for (n, c) in d {
                        if c.view_on().is_some() {
                            continue;
                        }
                        let storage_order = c.capped() && self.capped_in_storage_order;
                        if storage_order {
                            capped.push(n.clone());
                        }
                        let mut docs: Vec<&Document> = c.docs.iter().collect();
                        if !storage_order {
                            docs.sort_by(|a, b| id_key(a).partial_cmp(&id_key(b)).unwrap_or(std::cmp::Ordering::Equal));
                        }
                        let mut h = md5::Md5::new();
                        for d in docs {
                            h.update(bson::to_vec(d).unwrap_or_default());
                        }
                        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                        all.update(hex.as_bytes());
                        colls.insert(n.clone(), hex);
                    }
                }
                let md5: String = all.finalize().iter().map(|b| format!("{b:02x}")).collect();
                let mut reply = doc! {"numCollections": count32(colls.len()), "host": "standin", "collections": colls, "md5": md5};
                if self.capped_in_storage_order {
                    reply.insert("capped", capped);
                }
                Ok(reply)
            }
            _ => return None,
        };
        Some(r)
    }
}

/// A count as the int32 MongoDB replies carry (saturating; no count here comes near).
fn count32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
