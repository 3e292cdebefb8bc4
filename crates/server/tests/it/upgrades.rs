//! Upgrades and downgrades of tetherd's database (issue 21, ADR 0036).

use tether_testkit::{Database, Tetherd};

crate::support::on_both_databases!(a_database_migrated_by_a_newer_tetherd_is_refused_by_name);

/// An older tetherd on a database a newer one migrated would run on a
/// schema it does not know: it refuses to start, and says what to do.
async fn a_database_migrated_by_a_newer_tetherd_is_refused_by_name(
    database: Database,
) -> anyhow::Result<()> {
    let mut tetherd = Tetherd::start(database).await?;
    tetherd.stop().await?;
    let (url, checksum) = match tetherd.postgres() {
        Some(postgres) => (postgres.url(), "'\\x00'::bytea"),
        None => (
            format!(
                "sqlite://{}",
                tetherd.data_dir().join("tether.db").display()
            ),
            "X'00'",
        ),
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await?;
    sqlx::query(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from a newer tetherd', TRUE, {checksum}, 1)"
    ))
    .execute(&pool)
    .await?;
    pool.close().await;

    let error = match tetherd.start_again().await {
        Ok(()) => anyhow::bail!("tetherd started on a database from a newer version"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("the database was migrated by a newer tetherd (its schema is at migration 99990101000000, this tetherd knows up to ")
            && error.contains("run that version or a newer one; going back needs the backup taken before the upgrade"),
        "{error}"
    );
    Ok(())
}
