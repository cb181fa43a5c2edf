//! The `<app>-config` ConfigMap: the contract document (`scaled_contract::RuntimeConfig`) that
//! app and worker pods mount. The app reloads its shard map and rate-limit settings live; a hash
//! of the document on the pod templates rolls the pods for every other change.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use scaled_contract::{
    CONFIG_KEY, CacheSettings, CdnSettings, DatabaseSettings, FailureMode, QueueSettings,
    RateLimitSettings, RedisSettings, RuntimeConfig, SCHEMA_VERSION, SessionSettings,
};

use super::{child_name, object_meta};
use crate::crd::RateLimitFailureMode;
use crate::names::{DATABASE_NAME, DATABASE_USER};
use crate::validate::ValidatedApp;

/// The runtime configuration the app will read.
pub fn runtime_config(app: &ValidatedApp) -> RuntimeConfig {
    let spec = &app.spec;
    RuntimeConfig {
        schema_version: SCHEMA_VERSION,
        http_port: spec.app.port,
        metrics_port: spec.app.metrics_port,
        database: DatabaseSettings {
            name: DATABASE_NAME.into(),
            user: DATABASE_USER.into(),
            pool_size: spec.database.pool.size as u32,
            max_overflow: spec.database.pool.max_overflow as u32,
            acquire_timeout_ms: spec.database.pool.acquire_timeout_ms as u64,
            statement_timeout_ms: 5_000,
            read_your_writes_window_ms: 5_000,
        },
        shard_map: app.shard_map.clone(),
        cache: CacheSettings {
            l1_max_entries: spec.cache.l1.max_entries as u64,
            l1_ttl_seconds: spec.cache.l1.ttl_seconds as u64,
            default_ttl_seconds: spec.cache.default_ttl_seconds as u64,
            redis_timeout_ms: 50,
        },
        redis: match &spec.cache.external_redis {
            Some(external) => RedisSettings {
                url: external.url.clone(),
                password_required: external.password_secret_ref.is_some(),
                confirm_replicas: 0,
            },
            None => RedisSettings {
                url: app.redis_url.clone(),
                password_required: true,
                confirm_replicas: app.redis_replicas.min(1),
            },
        },
        rate_limit: RateLimitSettings {
            limit: spec.rate_limit.requests as u32,
            window_seconds: spec.rate_limit.window_seconds as u32,
            failure_mode: match spec.rate_limit.failure_mode {
                RateLimitFailureMode::FailOpen => FailureMode::FailOpen,
                RateLimitFailureMode::FailClosed => FailureMode::FailClosed,
                RateLimitFailureMode::Local => FailureMode::Local,
            },
            trusted_proxy_hops: spec.rate_limit.trusted_proxy_hops as u32,
        },
        sessions: SessionSettings {
            ttl_seconds: spec.sessions.ttl_seconds as u64,
            max_lifetime_seconds: spec.sessions.max_lifetime_seconds as u64,
            cookie_secure: spec.sessions.cookie_secure,
            cookie_name: "sid".into(),
        },
        cdn: CdnSettings {
            max_age_seconds: spec.cdn.max_age_seconds as u32,
        },
        queues: QueueSettings {
            max_attempts: 5,
            claim_idle_ms: 30_000,
            retry_backoff_ms: 1_000,
        },
    }
}

/// A short hash of what the pods read from the document only at start-up, which the app and
/// worker pod templates carry so that a change rolls them. The rate-limit settings are left out:
/// serving pods re-read them from the mounted file while they run (workers do not use them), so
/// changing a limit takes effect without replacing a pod. The shard map stays in: serving pods
/// re-read it too, but workers read it once.
pub fn config_hash(app: &ValidatedApp) -> String {
    use sha2::{Digest, Sha256};
    let mut document =
        serde_json::to_value(runtime_config(app)).expect("the runtime config always serialises");
    if let Some(fields) = document.as_object_mut() {
        fields.remove("rateLimit");
    }
    hex::encode(&Sha256::digest(document.to_string().as_bytes())[..8])
}

/// The ConfigMap holding the document.
pub fn config_map(app: &ValidatedApp) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(app, child_name(app, "config"), "app"),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_string(),
            runtime_config(app).to_json(),
        )])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rate_limit_change_leaves_the_pods_hash_alone_and_any_other_change_moves_it() {
        let app = crate::test_support::validated_example("shop");
        let hash = super::config_hash(&app);
        let mut limited = app.clone();
        limited.spec.rate_limit.requests += 1;
        limited.spec.rate_limit.window_seconds += 1;
        assert_ne!(
            super::runtime_config(&limited).rate_limit,
            super::runtime_config(&app).rate_limit
        );
        assert_eq!(super::config_hash(&limited), hash, "reloaded live, no roll");
        let mut cached = app.clone();
        cached.spec.cache.default_ttl_seconds += 1;
        assert_ne!(super::config_hash(&cached), hash, "read at start-up: rolls");
    }

    use super::*;
    use crate::test_support::validated_example;

    #[test]
    fn the_config_map_holds_a_document_the_app_accepts() {
        let app = validated_example("shop");
        let map = config_map(&app);
        let text = &map.data.expect("data")[CONFIG_KEY];
        let config = RuntimeConfig::from_json(text).expect("the app's own parser accepts it");
        assert_eq!(config.database.pool_size, 20);
        assert_eq!(config.database.max_overflow, 40);
        assert_eq!(config.rate_limit.limit, 100);
        assert_eq!(config.rate_limit.window_seconds, 60);
        assert_eq!(
            config.rate_limit.trusted_proxy_hops, 0,
            "X-Forwarded-For is ignored by default"
        );
        assert_eq!(config.cdn.max_age_seconds, 3600);
        assert_eq!(config.sessions.ttl_seconds, 3600);
        assert_eq!(config.cache.default_ttl_seconds, 3600);
        assert_eq!(config.shard_map.slots, 1024);
        assert_eq!(
            config.shard_map.shards.len(),
            app.spec.database.shards as usize
        );
    }

    #[test]
    fn every_pod_of_a_shard_is_addressed_through_the_headless_service() {
        let app = validated_example("shop");
        let endpoints = &runtime_config(&app).shard_map.shards[1];
        assert_eq!(endpoints.primary, "shop-shard-1-primary.default.svc:5432");
        assert_eq!(
            endpoints.replicas,
            vec![
                "shop-shard-1-0.shop-shard-1.default.svc:5432".to_string(),
                "shop-shard-1-1.shop-shard-1.default.svc:5432".to_string(),
                "shop-shard-1-2.shop-shard-1.default.svc:5432".to_string(),
            ]
        );
    }

    #[test]
    fn a_changed_setting_changes_the_pod_templates_so_pods_roll() {
        use crate::render::render;
        let template_hash = |app: &ValidatedApp| {
            let children = render(app);
            let hash = |deployment: &k8s_openapi::api::apps::v1::Deployment| {
                deployment
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.template.metadata.as_ref())
                    .and_then(|meta| meta.annotations.as_ref())
                    .and_then(|annotations| annotations.get("scaled.dev/config-hash").cloned())
                    .expect("hash annotation")
            };
            let app_hash = hash(&children.app.deployment);
            assert!(
                children
                    .workers
                    .iter()
                    .all(|pool| hash(&pool.deployment) == app_hash)
            );
            app_hash
        };
        let mut app = validated_example("shop");
        let before = template_hash(&app);
        assert_eq!(template_hash(&app), before, "stable");
        app.spec.rate_limit.requests += 1;
        assert_eq!(
            template_hash(&app),
            before,
            "the rate limit is reloaded live: no roll"
        );
        app.spec.sessions.ttl_seconds += 1;
        assert_ne!(template_hash(&app), before);
    }
}
