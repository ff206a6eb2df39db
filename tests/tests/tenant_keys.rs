//! Every tenant table can be distributed by `tenant_id` (Citus; see
//! deploy/SCALING.md): its primary key, each unique constraint and unique
//! index, and each foreign key include `tenant_id`, and a foreign key to
//! another tenant table joins on it. Read from the catalogue of a database
//! migrated by all three services, so a new table or key is checked as soon
//! as its migration exists.

use std::collections::BTreeSet;

use tp_e2e::TestDatabase;

/// Tables without tenants: migration bookkeeping and the built-in corpus.
/// (Under Citus these stay local or become reference tables.)
const GLOBAL: [&str; 4] = [
    "conversation._sqlx_migrations",
    "gateway._sqlx_migrations",
    "knowledge._sqlx_migrations",
    "knowledge.entries",
];

/// A constraint as the catalogue holds it: table, name, kind, columns, and
/// for a foreign key the referenced table and columns.
#[derive(sqlx::FromRow)]
struct Constraint {
    table: String,
    name: String,
    kind: String,
    columns: Vec<String>,
    referenced: Option<String>,
    referenced_columns: Vec<String>,
}

#[tokio::test]
async fn every_tenant_tables_keys_include_tenant_id() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    db.migrate().await?;
    let admin = TestDatabase::pool(&db.admin_url).await?;

    let tenant_tables: BTreeSet<String> = sqlx::query_scalar(
        "SELECT DISTINCT table_schema || '.' || table_name FROM information_schema.columns
          WHERE table_schema IN ('gateway', 'conversation', 'knowledge')
            AND column_name = 'tenant_id'",
    )
    .fetch_all(&admin)
    .await?
    .into_iter()
    .collect();
    let all_tables: Vec<String> = sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('gateway', 'conversation', 'knowledge')
          ORDER BY 1",
    )
    .fetch_all(&admin)
    .await?;
    for table in &all_tables {
        assert!(
            tenant_tables.contains(table) || GLOBAL.contains(&table.as_str()),
            "{table} has no tenant_id and is not one of the known global tables"
        );
    }
    assert!(
        tenant_tables.len() >= 12,
        "the check reads the tenant tables: {tenant_tables:?}"
    );

    // Constraints (p: primary key, u: unique, f: foreign key) with their
    // columns and, for foreign keys, the referenced table and columns, each
    // in key order (a foreign key pairs them by position).
    let constraints: Vec<Constraint> = sqlx::query_as(
        "SELECT n.nspname || '.' || c.relname AS table, con.conname AS name,
                    con.contype::text AS kind,
                    ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(num, pos)
                            JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num
                           ORDER BY k.pos) AS columns,
                    CASE WHEN con.contype = 'f'
                         THEN (SELECT rn.nspname || '.' || r.relname FROM pg_class r
                                 JOIN pg_namespace rn ON rn.oid = r.relnamespace
                                WHERE r.oid = con.confrelid) END AS referenced,
                    ARRAY(SELECT a.attname::text
                             FROM unnest(coalesce(con.confkey, '{}')) WITH ORDINALITY k(num, pos)
                             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num
                            ORDER BY k.pos) AS referenced_columns
               FROM pg_constraint con
               JOIN pg_class c ON c.oid = con.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname IN ('gateway', 'conversation', 'knowledge')
                AND con.contype IN ('p', 'u', 'f')
              ORDER BY 1, 2",
    )
    .fetch_all(&admin)
    .await?;

    let mut problems = Vec::new();
    let mut with_primary_key = BTreeSet::new();
    let mut foreign_keys = 0;
    for Constraint {
        table,
        name,
        kind,
        columns,
        referenced,
        referenced_columns,
    } in &constraints
    {
        if !tenant_tables.contains(table) {
            continue;
        }
        let has_tenant = columns.iter().any(|c| c == "tenant_id");
        match kind.as_str() {
            "p" => {
                with_primary_key.insert(table.clone());
                if !has_tenant {
                    problems.push(format!("{table}: primary key {name} {columns:?}"));
                }
            }
            "u" if !has_tenant => {
                problems.push(format!("{table}: unique constraint {name} {columns:?}"));
            }
            "f" => {
                foreign_keys += 1;
                let target = referenced.as_deref().unwrap_or("?");
                // Joined on tenant_id: the tenant column maps onto the
                // referenced table's tenant column.
                let joined = columns
                    .iter()
                    .zip(referenced_columns)
                    .any(|(from, to)| from == "tenant_id" && to == "tenant_id");
                if !joined {
                    problems.push(format!(
                        "{table}: foreign key {name} {columns:?} -> {target} {referenced_columns:?}"
                    ));
                }
            }
            _ => {}
        }
    }
    for table in &tenant_tables {
        if !with_primary_key.contains(table) {
            problems.push(format!("{table}: no primary key"));
        }
    }

    // Unique indexes made outside constraints bind a distributed table too.
    let unique_indexes: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT n.nspname || '.' || c.relname, i.relname,
                ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) k
                        JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k)
           FROM pg_index x
           JOIN pg_class i ON i.oid = x.indexrelid
           JOIN pg_class c ON c.oid = x.indrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE x.indisunique AND n.nspname IN ('gateway', 'conversation', 'knowledge')",
    )
    .fetch_all(&admin)
    .await?;
    for (table, index, columns) in &unique_indexes {
        if tenant_tables.contains(table) && !columns.iter().any(|c| c == "tenant_id") {
            problems.push(format!("{table}: unique index {index} {columns:?}"));
        }
    }

    assert!(
        problems.is_empty(),
        "tenant tables with keys that do not include tenant_id (they could not be \
         distributed by tenant):\n  {}",
        problems.join("\n  ")
    );
    assert!(
        foreign_keys >= 8,
        "the check reads the foreign keys ({foreign_keys} seen)"
    );
    admin.close().await;
    Ok(())
}
