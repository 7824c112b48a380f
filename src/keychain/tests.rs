use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::system::fake::{ManualClock, MemoryFiles, ScriptedProcesses};

fn keychain(toml: &str, files: Arc<MemoryFiles>) -> Keychain {
    let config = Config::parse(toml, Path::new("/etc/credgate/config.toml")).unwrap();
    let processes = Arc::new(ScriptedProcesses::new(|_| {
        ScriptedProcesses::exit(1, "credentials not found in native keychain")
    }));
    let system = System::fake(Arc::new(ManualClock::new()), processes, files);
    Keychain::from_config(&config, &system)
}

fn target(s: &str) -> Target {
    Target::parse(s).unwrap()
}

async fn winner(k: &Keychain, t: &str) -> Option<String> {
    let d = k.lookup(&target(t)).await;
    d.winner.map(|w| w.credential.username)
}

const LAYERED: &str = r#"
[[registry]]
match = "*.example.com"
username = "glob"
password = "p0"

[[registry]]
match = "git.example.com"
username = "host"
password = "p1"

[[registry]]
match = "git.example.com/group"
username = "group"
password = "p2"

[[registry]]
match = "git.example.com/group/sub"
username = "sub"
password = "p3"
"#;

#[tokio::test]
async fn the_most_specific_scope_wins() {
    let k = keychain(LAYERED, Arc::default());
    assert_eq!(
        winner(&k, "git.example.com/group/sub/app").await.as_deref(),
        Some("sub")
    );
    assert_eq!(
        winner(&k, "git.example.com:443/group/sub/app")
            .await
            .as_deref(),
        Some("sub")
    );
    assert_eq!(
        winner(&k, "git.example.com/group/subway").await.as_deref(),
        Some("group")
    );
    assert_eq!(
        winner(&k, "git.example.com/other").await.as_deref(),
        Some("host")
    );
    assert_eq!(
        winner(&k, "ci.example.com/group/sub/app").await.as_deref(),
        Some("glob")
    );
    assert_eq!(winner(&k, "git.example.com:5000/group/sub/app").await, None);
    assert_eq!(winner(&k, "a.b.example.com/x").await, None);
}

#[tokio::test]
async fn the_ranking_lists_every_match_best_first() {
    let k = keychain(LAYERED, Arc::default());
    let ranking = k.rank(&target("git.example.com/group/sub/app")).await;
    let scopes: Vec<String> = ranking
        .candidates
        .iter()
        .map(|c| c.offer.scope.to_string())
        .collect();
    assert_eq!(
        scopes,
        [
            "git.example.com/group/sub",
            "git.example.com/group",
            "git.example.com",
            "*.example.com"
        ]
    );
    let (next, _) = ranking.resolve_from(1).await;
    assert_eq!(next.unwrap().credential.username, "group");
}

#[tokio::test]
async fn equal_specificity_goes_to_the_source_listed_first() {
    let toml = "[[registry]]\nmatch = \"r.test/a\"\nusername = \"first\"\npassword = \"x\"\n\n[[registry]]\nmatch = \"r.test:443/a\"\nusername = \"second\"\npassword = \"y\"\n";
    let k = keychain(toml, Arc::default());
    assert_eq!(winner(&k, "r.test/a/b").await.as_deref(), Some("first"));
    let e = k.explain(&target("r.test/a/b")).await;
    assert_eq!(e.winner, Some(0));
    assert!(
        matches!(e.reason, Some(WinReason::ListedFirst { .. })),
        "{:?}",
        e.reason
    );
}

#[tokio::test]
async fn a_failing_candidate_falls_through_to_the_next() {
    let files = Arc::new(MemoryFiles::new());
    files.write("/s/fallback", "pw\n", 0o600);
    let toml = "[[registry]]\nmatch = \"r.test/a\"\nusername = \"broken\"\npassword_file = \"/s/missing\"\n\n[[registry]]\nmatch = \"r.test\"\nusername = \"fallback\"\npassword_file = \"/s/fallback\"\n";
    let k = keychain(toml, files);
    let d = k.lookup(&target("r.test/a/b")).await;
    assert_eq!(d.winner.as_ref().unwrap().credential.username, "fallback");
    assert!(d.had_failures());
    assert!(matches!(&d.attempts[0], (0, Attempt::Failed(m)) if m.contains("/s/missing")));
    let e = k.explain(&target("r.test/a/b")).await;
    assert_eq!((e.winner, e.passed_over), (Some(1), 1));
    assert_eq!(e.reason, Some(WinReason::Only));
}

#[tokio::test]
async fn explain_reports_sources_that_found_nothing() {
    let toml = "[[registry]]\nmatch = \"other.test\"\nusername = \"u\"\npassword = \"p\"\n\n[[registry]]\nmatch = \"r.test\"\nusername = \"u2\"\npassword = \"p2\"\n";
    let k = keychain(toml, Arc::default());
    let e = k.explain(&target("r.test/app")).await;
    let outcomes: Vec<_> = e
        .ranking
        .sources
        .iter()
        .map(|s| s.outcome.clone())
        .collect();
    assert_eq!(
        outcomes,
        [SourceOutcome::NothingMatched, SourceOutcome::Offered(1)]
    );
    assert_eq!(e.candidates[0].username.as_deref(), Some("u2"));
}

#[tokio::test]
async fn a_bare_registry_matches_only_host_wide_scopes() {
    let k = keychain(LAYERED, Arc::default());
    assert_eq!(winner(&k, "git.example.com").await.as_deref(), Some("host"));
    assert_eq!(
        winner(&k, "https://git.example.com:443/").await.as_deref(),
        Some("host")
    );
}

#[tokio::test]
async fn a_bare_registry_falls_back_to_the_path_scoped_credential_helpers_are_asked_for() {
    let toml = "[[registry]]\nmatch = \"git.example.com/group/sub\"\nusername = \"deploy\"\npassword = \"p\"\n\n[[registry]]\nmatch = \"git.example.com/other\"\nusername = \"second\"\npassword = \"q\"\n";
    let k = keychain(toml, Arc::default());
    let d = k.lookup(&target("git.example.com:443")).await;
    assert_eq!(d.winner.unwrap().credential.username, "deploy");
    assert_eq!(d.requested, target("git.example.com"));
    assert_eq!(d.ranking.target, target("git.example.com/group/sub"));
    assert_eq!(winner(&k, "other.example.com").await, None);
    // A registry-wide entry, when there is one, is what a bare registry gets.
    let with_wide = format!("{toml}\n[[registry]]\nmatch = \"git.example.com\"\nusername = \"wide\"\npassword = \"w\"\n");
    let k = keychain(&with_wide, Arc::default());
    assert_eq!(winner(&k, "git.example.com").await.as_deref(), Some("wide"));
}

#[tokio::test]
async fn the_listing_keeps_each_scopes_kind_of_secret_and_the_api_says_it() {
    let k = keychain(
        "[[registry]]\nmatch = \"bearer.test\"\nregistry_token = \"b\"\n\n\
         [[registry]]\nmatch = \"docker.io\"\nusername = \"hub\"\nidentity_token = \"t\"\n\n\
         [[registry]]\nmatch = \"bearer.test\"\nusername = \"later\"\npassword = \"p\"\n\n\
         [[registry]]\nmatch = \"helper.test\"\nhelper = \"pass\"\n",
        Arc::default(),
    );
    let listed = k.listing().await;
    let response = crate::api::ListResponse::from(listed.as_slice());
    let kinds: Vec<(&str, &str, crate::api::AuthType)> = response
        .listed
        .iter()
        .map(|l| {
            (
                l.scope.as_str(),
                l.username.as_str(),
                l.auth_type.enum_value_or_default(),
            )
        })
        .collect();
    // The first source wins a scope, as it wins the lookup.
    assert_eq!(
        kinds,
        [
            ("bearer.test", "", crate::api::AuthType::HEADER),
            ("docker.io", "hub", crate::api::AuthType::REFRESH),
            ("helper.test", "", crate::api::AuthType::NONE),
        ]
    );
    assert_eq!(response.entries.len(), 3);
    assert_eq!(response.entries["docker.io"], "hub");
}

#[tokio::test]
async fn helper_stats_count_the_answers_the_keychains_helpers_gave() {
    let k = keychain(
        "[[registry]]\nmatch = \"helper.test\"\nhelper = \"pass\"\n",
        Arc::default(),
    );
    assert_eq!(k.helper_stats(), HelperStats::default());
    for _ in 0..3 {
        assert!(winner(&k, "helper.test/a").await.is_none());
    }
    assert_eq!(
        k.helper_stats(),
        HelperStats {
            cached_answers: 1,
            running: 0,
            timeouts: 0
        }
    );
    assert_eq!(
        Keychain::new(Vec::new()).helper_stats(),
        HelperStats::default()
    );
}

#[tokio::test]
async fn a_lookup_asks_only_the_entries_for_its_registry_and_keeps_config_order() {
    let dir = "/etc/docker/config.json";
    let files = Arc::new(MemoryFiles::default());
    files.write(
        dir,
        r#"{"auths":{"tie.test":{"auth":"ZG9ja2VyOnB3"}}}"#,
        0o600,
    );
    let toml = format!(
        "[[registry]]\nmatch = \"other.test\"\nusername = \"u0\"\npassword = \"p\"\n\n\
         [[docker_config]]\npath = \"{dir}\"\n\n\
         [[registry]]\nmatch = \"tie.test\"\nusername = \"entry\"\npassword = \"p\"\n\n\
         [[registry]]\nmatch = \"*.test\"\nusername = \"glob\"\npassword = \"p\"\n"
    );
    let k = keychain(&toml, files);
    let ranking = k.rank(&target("tie.test/app")).await;
    let asked: Vec<&str> = ranking.sources.iter().map(|s| &*s.source).collect();
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(asked[0].starts_with("docker config"), "{asked:?}");
    assert!(asked[1].ends_with(":9"), "{asked:?}");
    assert!(asked[2].ends_with(":14"), "{asked:?}");
    // The docker config is listed before the entry, so it wins the tie, as with every source.
    assert_eq!(winner(&k, "tie.test/app").await.as_deref(), Some("docker"));
    // explain still says what every source found.
    let e = k.explain(&target("tie.test/app")).await;
    assert_eq!(e.ranking.sources.len(), 4);
    assert_eq!(e.ranking.sources[0].outcome, SourceOutcome::NothingMatched);
}

#[tokio::test]
async fn ten_thousand_entries_find_the_same_winner_as_one() {
    let mut toml = String::new();
    for i in 0..10_000 {
        toml += &format!(
            "[[registry]]\nmatch = \"r{i}.test/team\"\nusername = \"u{i}\"\npassword = \"p\"\n\n"
        );
    }
    let k = keychain(&toml, Arc::default());
    assert_eq!(
        winner(&k, "r9999.test/team/app").await.as_deref(),
        Some("u9999")
    );
    assert_eq!(winner(&k, "r9999.test/other").await, None);
    // A client naming only the host is narrowed to that host's path scope, not another's.
    let d = k.lookup(&target("r4242.test")).await;
    assert_eq!(d.ranking.target.to_string(), "r4242.test/team");
    assert_eq!(
        d.winner.map(|w| w.credential.username).as_deref(),
        Some("u4242")
    );
}
