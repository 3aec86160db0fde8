//! The authorization matrix: every `/v1` route and every WebSocket operation against every
//! kind of caller, with the expected status or error code. The matrix must cover every
//! operation of the OpenAPI document: a new route without rows fails
//! `matrix_covers_every_documented_route`, and a new `ClientFrame` type without a WebSocket
//! row fails `ws_matrix_covers_every_client_frame`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_range_loop,
    missing_docs
)]

use protocol::{ClientFrame, ConvId, ErrorCode, GroupId, Seq, ServerFrame};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use testkit::*;

/// The kinds of caller, in the order of every row's expectations.
const CALLERS: [&str; 10] = [
    "none",
    "expired",
    "deactivated",
    "external",
    "nonmember",
    "member",
    "muted",
    "admin",
    "owner",
    "company_admin",
];

/// The user id behind each caller kind (`none` has no token).
fn user_of(i: usize) -> Option<&'static str> {
    [
        None,
        Some("mem"),
        Some("gone"),
        Some("ext"),
        Some("stranger"),
        Some("mem"),
        Some("mute"),
        Some("adm"),
        Some("own"),
        Some("boss"),
    ][i]
}

/// What a row needs prepared in its fixture group before the callers run.
#[derive(Clone, Copy, PartialEq)]
enum Setup {
    /// Nothing beyond the fixture group.
    Plain,
    /// Every caller's victim is muted.
    MuteVictims,
    /// Every caller's victim is banned.
    BanVictims,
    /// Ten messages exist (seq 1..=10).
    Messages,
    /// Ten messages exist and are pinned.
    Pinned,
    /// Each caller has its own group (`{gc}`).
    OwnGroups,
    /// Each caller has its own archived group (`{gc}`).
    ArchivedGroups,
    /// Each caller has its own pending post (`{post}`).
    Posts,
}

struct Row {
    /// The OpenAPI operation this row covers.
    method: &'static str,
    api: &'static str,
    /// The request; `{g}` the fixture group, `{gc}` the caller's own group, `{v}` the caller's
    /// victim (a member of the fixture group), `{i}` the caller's index, `{post}` its post.
    path: &'static str,
    body: Option<&'static str>,
    setup: Setup,
    expect: [u16; 10],
}

const fn row(
    method: &'static str,
    api: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    setup: Setup,
    expect: [u16; 10],
) -> Row {
    Row {
        method,
        api,
        path,
        body,
        setup,
        expect,
    }
}

// Expectations: [none, expired, deactivated, external, nonmember, member, muted, admin,
// owner, company_admin].
const ANYONE: [u16; 10] = [200; 10];
const SIGNED_IN: [u16; 10] = [401, 401, 401, 200, 200, 200, 200, 200, 200, 200];
const INTERNAL: [u16; 10] = [401, 401, 401, 403, 200, 200, 200, 200, 200, 200];
const COMPANY_ADMIN: [u16; 10] = [401, 401, 401, 403, 403, 403, 403, 403, 403, 200];
const COMPANY_ADMIN_201: [u16; 10] = [401, 401, 401, 403, 403, 403, 403, 403, 403, 201];
const COMPANY_ADMIN_204: [u16; 10] = [401, 401, 401, 403, 403, 403, 403, 403, 403, 204];
const MEMBERS: [u16; 10] = [401, 401, 401, 403, 403, 200, 200, 200, 200, 200];
const GROUP_ADMINS: [u16; 10] = [401, 401, 401, 403, 403, 403, 403, 200, 200, 200];
const GROUP_ADMINS_204: [u16; 10] = [401, 401, 401, 403, 403, 403, 403, 204, 204, 204];
const GROUP_OWNER: [u16; 10] = [401, 401, 401, 403, 403, 403, 403, 403, 200, 200];
const GROUP_OWNER_204: [u16; 10] = [401, 401, 401, 403, 403, 403, 403, 403, 204, 204];
/// Company administrators, about a record that does not exist: they get 404.
const COMPANY_ADMIN_404: [u16; 10] = [401, 401, 401, 403, 403, 403, 403, 403, 403, 404];
/// Reviewers of held messages, asking for one that does not exist: allowed callers get 404.
const GROUP_ADMINS_404: [u16; 10] = [401, 401, 401, 403, 403, 403, 403, 404, 404, 404];

fn rows() -> Vec<Row> {
    use Setup::*;
    vec![
        row("get", "/healthz", "/healthz", None, Plain, ANYONE),
        row(
            "post",
            "/v1/login",
            "/v1/login",
            Some(r#"{"user":"mem","password":"member123"}"#),
            Plain,
            ANYONE,
        ),
        row(
            "post",
            "/v1/users",
            "/v1/users",
            Some(r#"{"id":"new{i}","name":"New {i}"}"#),
            Plain,
            COMPANY_ADMIN_201,
        ),
        row("get", "/v1/users", "/v1/users?q=mem", None, Plain, INTERNAL),
        row(
            "get",
            "/v1/users/{id}",
            "/v1/users/mem",
            None,
            Plain,
            INTERNAL,
        ),
        row(
            "patch",
            "/v1/users/{id}",
            "/v1/users/mem",
            Some(r#"{"title":"Engineer {i}"}"#),
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "post",
            "/v1/users/{id}/deactivate",
            "/v1/users/d{i}/deactivate",
            None,
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "post",
            "/v1/users/{id}/activate",
            "/v1/users/mem/activate",
            None,
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "put",
            "/v1/users/{id}/password",
            "/v1/users/v{i}/password",
            Some(r#"{"password":"fresh12345"}"#),
            Plain,
            COMPANY_ADMIN_204,
        ),
        row(
            "post",
            "/v1/departments",
            "/v1/departments",
            Some(r#"{"id":"dept{i}","name":"Dept {i}"}"#),
            Plain,
            COMPANY_ADMIN_201,
        ),
        row(
            "get",
            "/v1/departments",
            "/v1/departments",
            None,
            Plain,
            INTERNAL,
        ),
        row(
            "patch",
            "/v1/departments/{id}",
            "/v1/departments/eng",
            Some(r#"{"name":"Engineering {i}"}"#),
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "delete",
            "/v1/departments/{id}",
            "/v1/departments/empty{i}",
            None,
            Plain,
            COMPANY_ADMIN_204,
        ),
        row("get", "/v1/me", "/v1/me", None, Plain, SIGNED_IN),
        row(
            "get",
            "/v1/me/sessions",
            "/v1/me/sessions",
            None,
            Plain,
            SIGNED_IN,
        ),
        row(
            "delete",
            "/v1/me/sessions/{id}",
            "/v1/me/sessions/nosuch",
            None,
            Plain,
            [401, 401, 401, 204, 204, 204, 204, 204, 204, 204],
        ),
        row(
            "post",
            "/v1/groups",
            "/v1/groups",
            Some(r#"{"name":"Created by {i}"}"#),
            Plain,
            [401, 401, 401, 403, 201, 201, 201, 201, 201, 201],
        ),
        row("get", "/v1/groups", "/v1/groups", None, Plain, SIGNED_IN),
        row(
            "get",
            "/v1/groups/{id}",
            "/v1/groups/{g}",
            None,
            Plain,
            MEMBERS,
        ),
        row(
            "post",
            "/v1/groups/{id}/members",
            "/v1/groups/{g}/members",
            Some(r#"{"user":"n{i}"}"#),
            Plain,
            GROUP_ADMINS,
        ),
        row(
            "delete",
            "/v1/groups/{id}/members/{user}",
            "/v1/groups/{g}/members/v{i}",
            None,
            Plain,
            GROUP_ADMINS_204,
        ),
        row(
            "put",
            "/v1/groups/{id}/members/{user}/role",
            "/v1/groups/{g}/members/v{i}/role",
            Some(r#"{"role":"admin"}"#),
            Plain,
            GROUP_OWNER,
        ),
        row(
            "post",
            "/v1/groups/{id}/transfer",
            "/v1/groups/{g}/transfer",
            Some(r#"{"user":"v{i}"}"#),
            Plain,
            GROUP_OWNER_204,
        ),
        row(
            "post",
            "/v1/groups/{id}/mutes",
            "/v1/groups/{g}/mutes",
            Some(r#"{"user":"v{i}","duration_secs":60}"#),
            Plain,
            GROUP_ADMINS,
        ),
        row(
            "delete",
            "/v1/groups/{id}/mutes/{user}",
            "/v1/groups/{g}/mutes/v{i}",
            None,
            MuteVictims,
            GROUP_ADMINS_204,
        ),
        row(
            "put",
            "/v1/groups/{id}/muted_all",
            "/v1/groups/{g}/muted_all",
            Some(r#"{"muted":false}"#),
            Plain,
            GROUP_ADMINS,
        ),
        row(
            "post",
            "/v1/groups/{id}/bans",
            "/v1/groups/{g}/bans",
            Some(r#"{"user":"v{i}"}"#),
            Plain,
            GROUP_ADMINS_204,
        ),
        row(
            "delete",
            "/v1/groups/{id}/bans/{user}",
            "/v1/groups/{g}/bans/v{i}",
            None,
            BanVictims,
            GROUP_ADMINS_204,
        ),
        row(
            "put",
            "/v1/groups/{id}/pins/{seq}",
            "/v1/groups/{g}/pins/{seq}",
            None,
            Messages,
            GROUP_ADMINS,
        ),
        row(
            "delete",
            "/v1/groups/{id}/pins/{seq}",
            "/v1/groups/{g}/pins/{seq}",
            None,
            Pinned,
            GROUP_ADMINS,
        ),
        row(
            "put",
            "/v1/groups/{id}/announcement",
            "/v1/groups/{g}/announcement",
            Some(r#"{"text":"Notice {i}"}"#),
            Plain,
            GROUP_ADMINS,
        ),
        row(
            "get",
            "/v1/groups/{id}/moderation",
            "/v1/groups/{g}/moderation",
            None,
            Plain,
            GROUP_ADMINS,
        ),
        row(
            "put",
            "/v1/groups/{id}/moderation",
            "/v1/groups/{g}/moderation",
            Some(r#"{"words":["word{i}"]}"#),
            Plain,
            GROUP_ADMINS,
        ),
        row(
            "put",
            "/v1/groups/{id}/approval",
            "/v1/groups/{g}/approval",
            Some(r#"{"required":false}"#),
            Plain,
            GROUP_OWNER,
        ),
        row(
            "post",
            "/v1/groups/{id}/archive",
            "/v1/groups/{gc}/archive",
            None,
            OwnGroups,
            GROUP_OWNER,
        ),
        row(
            "post",
            "/v1/groups/{id}/dissolve",
            "/v1/groups/{gc}/dissolve",
            None,
            ArchivedGroups,
            GROUP_OWNER_204,
        ),
        row(
            "get",
            "/v1/conversations",
            "/v1/conversations",
            None,
            Plain,
            SIGNED_IN,
        ),
        row(
            "delete",
            "/v1/conversations/{conv}/messages/{seq}",
            "/v1/conversations/group:{g}/messages/{seq}",
            None,
            Messages,
            GROUP_ADMINS_204,
        ),
        row(
            "get",
            "/v1/review",
            "/v1/review?conv=group:{g}",
            None,
            Plain,
            GROUP_ADMINS,
        ),
        row(
            "post",
            "/v1/review/approve",
            "/v1/review/approve",
            Some(r#"{"conv":"group:{g}","id":"nosuch"}"#),
            Plain,
            GROUP_ADMINS_404,
        ),
        row(
            "post",
            "/v1/review/reject",
            "/v1/review/reject",
            Some(r#"{"conv":"group:{g}","id":"nosuch"}"#),
            Plain,
            GROUP_ADMINS_404,
        ),
        row(
            "get",
            "/v1/audit",
            "/v1/audit?limit=5",
            None,
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "get",
            "/v1/admin/backup",
            "/v1/admin/backup",
            None,
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "get",
            "/v1/admin/retention",
            "/v1/admin/retention",
            None,
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "put",
            "/v1/admin/retention",
            "/v1/admin/retention",
            Some(r#"{"company":{"message_age_secs":0}}"#),
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "post",
            "/v1/admin/retention/dry-run",
            "/v1/admin/retention/dry-run",
            Some(r#"{"policies":{"company":{"message_age_secs":86400}}}"#),
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "post",
            "/v1/admin/retention/run",
            "/v1/admin/retention/run",
            Some("{}"),
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "get",
            "/v1/admin/holds",
            "/v1/admin/holds",
            None,
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "post",
            "/v1/admin/holds",
            "/v1/admin/holds",
            Some(r#"{"scope":{"type":"user","user":"nobody"},"reason":"authz"}"#),
            Plain,
            COMPANY_ADMIN_201,
        ),
        row(
            "post",
            "/v1/admin/holds/{id}/release",
            "/v1/admin/holds/hnosuch/release",
            None,
            Plain,
            COMPANY_ADMIN_404,
        ),
        row(
            "get",
            "/v1/admin/compliance/events",
            "/v1/admin/compliance/events?limit=5",
            None,
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "get",
            "/v1/admin/compliance/exports",
            "/v1/admin/compliance/exports",
            None,
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "post",
            "/v1/admin/compliance/exports",
            "/v1/admin/compliance/exports",
            None,
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "post",
            "/v1/admin/moderation/reload",
            "/v1/admin/moderation/reload",
            None,
            Plain,
            COMPANY_ADMIN,
        ),
        row(
            "post",
            "/v1/admin/users/{user}/lift",
            "/v1/admin/users/mute/lift",
            None,
            Plain,
            COMPANY_ADMIN_204,
        ),
        row(
            "post",
            "/v1/admin/users/{user}/disconnect",
            "/v1/admin/users/nobody/disconnect",
            None,
            Plain,
            COMPANY_ADMIN_204,
        ),
        row("get", "/v1/posts", "/v1/posts", None, Plain, SIGNED_IN),
        row(
            "post",
            "/v1/posts/{id}/approve",
            "/v1/posts/{post}/approve",
            None,
            Posts,
            COMPANY_ADMIN,
        ),
        row(
            "post",
            "/v1/posts/{id}/reject",
            "/v1/posts/{post}/reject",
            Some(r#"{"reason":"no"}"#),
            Posts,
            COMPANY_ADMIN,
        ),
    ]
}

fn node() -> Node {
    Node::start_with(
        NodeOpts::default()
            .env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
            .env("CHATD_AUTH__REVIEWERS", r#"["rev"]"#)
            .env("CHATD_AUTH__LOGIN_ATTEMPTS_PER_MINUTE", 100)
            // Every route for every caller: far more changes per account than a person makes.
            .env("CHATD_LIMITS__HTTP_WRITES_PER_SEC", 100_000)
            .env("CHATD_LIMITS__HTTP_WRITES_BURST", 100_000)
            .env("CHATD_LIMITS__HTTP_READS_PER_SEC", 100_000)
            .env("CHATD_LIMITS__HTTP_READS_BURST", 100_000),
    )
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.to_uppercase().as_bytes()).unwrap()
}

async fn ok(api: &Api, m: Method, path: &str, user: &str, body: Option<Value>) -> Value {
    let (s, b) = api.call(m, path, Some(user), body).await;
    assert!((200..300).contains(&s), "{path} as {user}: {s} {b}");
    b
}

/// The directory every fixture needs: the callers, ten victims, throwaway accounts.
async fn directory(api: &Api) {
    ok(
        api,
        Method::POST,
        "/v1/departments",
        "boss",
        Some(json!({"id": "eng", "name": "Eng"})),
    )
    .await;
    let mut users = vec![
        json!({"id": "own", "name": "Owner"}),
        json!({"id": "adm", "name": "Admin"}),
        json!({"id": "mem", "name": "Member", "password": "member123", "department": "eng"}),
        json!({"id": "mute", "name": "Muted"}),
        json!({"id": "stranger", "name": "Stranger"}),
        json!({"id": "gone", "name": "Gone"}),
        json!({"id": "ext", "name": "External", "external": true}),
        json!({"id": "rev", "name": "Reviewer"}),
    ];
    for i in 0..10 {
        users.push(json!({"id": format!("v{i}"), "name": format!("Victim {i}")}));
        users.push(json!({"id": format!("n{i}"), "name": format!("Newcomer {i}")}));
        users.push(json!({"id": format!("d{i}"), "name": format!("Leaver {i}")}));
        ok(
            api,
            Method::POST,
            "/v1/departments",
            "boss",
            Some(json!({"id": format!("empty{i}"), "name": format!("Empty {i}")})),
        )
        .await;
    }
    for u in users {
        api.create_account("boss", u).await;
    }
}

/// A project group owned by `own` with an admin, members, a muted member and the victims.
async fn fixture_group(api: &Api, name: &str) -> String {
    let mut members = vec!["adm", "mem", "mute", "gone"];
    let victims: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    members.extend(victims.iter().map(String::as_str));
    let g = api.create_group("own", name, &members).await;
    ok(
        api,
        Method::PUT,
        &format!("/v1/groups/{g}/members/adm/role"),
        "own",
        Some(json!({"role": "admin"})),
    )
    .await;
    ok(
        api,
        Method::POST,
        &format!("/v1/groups/{g}/mutes"),
        "own",
        Some(json!({"user": "mute", "duration_secs": 3600})),
    )
    .await;
    g
}

struct Fixture {
    g: String,
    own_groups: Vec<String>,
    posts: Vec<String>,
}

async fn prepare(api: &Api, node: &Node, n: usize, setup: Setup) -> Fixture {
    let g = fixture_group(api, &format!("Fixture {n}")).await;
    let mut own_groups = Vec::new();
    let mut posts = Vec::new();
    match setup {
        Setup::Plain => {}
        Setup::MuteVictims | Setup::BanVictims => {
            for i in 0..10 {
                let (path, body) = if setup == Setup::MuteVictims {
                    (
                        format!("/v1/groups/{g}/mutes"),
                        json!({"user": format!("v{i}"), "duration_secs": 600}),
                    )
                } else {
                    (
                        format!("/v1/groups/{g}/bans"),
                        json!({"user": format!("v{i}")}),
                    )
                };
                ok(api, Method::POST, &path, "own", Some(body)).await;
            }
        }
        Setup::Messages | Setup::Pinned => {
            let mut owner = Client::connect(node, "own").await;
            for i in 0..10 {
                ack_seq(&owner.send_group(&g, &format!("m{n}-{i}"), "hello").await);
                if setup == Setup::Pinned {
                    ok(
                        api,
                        Method::PUT,
                        &format!("/v1/groups/{g}/pins/{}", i + 1),
                        "own",
                        None,
                    )
                    .await;
                }
            }
        }
        Setup::OwnGroups | Setup::ArchivedGroups => {
            for i in 0..10 {
                let gc = fixture_group(api, &format!("Own {n}-{i}")).await;
                if setup == Setup::ArchivedGroups {
                    ok(
                        api,
                        Method::POST,
                        &format!("/v1/groups/{gc}/archive"),
                        "own",
                        None,
                    )
                    .await;
                }
                own_groups.push(gc);
            }
        }
        Setup::Posts => {
            ok(
                api,
                Method::PUT,
                &format!("/v1/groups/{g}/approval"),
                "own",
                Some(json!({"required": true})),
            )
            .await;
            for i in 0..10 {
                let b = ok(
                    api,
                    Method::PUT,
                    &format!("/v1/groups/{g}/announcement"),
                    "own",
                    Some(json!({"text": format!("Notice {i}")})),
                )
                .await;
                assert_eq!(b["status"], "pending", "{b}");
                posts.push(b["post"]["id"].as_str().unwrap().to_owned());
            }
        }
    }
    Fixture {
        g,
        own_groups,
        posts,
    }
}

fn fill(t: &str, fx: &Fixture, i: usize) -> String {
    t.replace("{gc}", fx.own_groups.get(i).map_or("", String::as_str))
        .replace("{g}", &fx.g)
        .replace("{post}", fx.posts.get(i).map_or("", String::as_str))
        .replace("{seq}", &(i + 1).to_string())
        .replace("{v}", &format!("v{i}"))
        .replace("{i}", &i.to_string())
}

fn bearer(i: usize) -> Option<String> {
    match (CALLERS[i], user_of(i)) {
        ("expired", Some(u)) => Some(token_with_exp(u, 1_000_000)),
        (_, Some(u)) => Some(token(u)),
        (_, None) => None,
    }
}

#[tokio::test]
async fn every_route_against_every_caller() {
    let node = node();
    let api = Api::new(&node);
    directory(&api).await;
    let mut fixtures = Vec::new();
    let rows = rows();
    for (n, r) in rows.iter().enumerate() {
        fixtures.push(prepare(&api, &node, n, r.setup).await);
    }
    // The deactivated caller was a member of every fixture until now.
    deactivate_gone(&api).await;
    let mut failures = Vec::new();
    for (r, fx) in rows.iter().zip(&fixtures) {
        for i in 0..CALLERS.len() {
            let path = fill(r.path, fx, i);
            let body = r
                .body
                .map(|b| serde_json::from_str::<Value>(&fill(b, fx, i)).unwrap());
            let token = bearer(i);
            let (status, answer) = api
                .call_token(method(r.method), &path, token.as_deref(), body)
                .await;
            check(
                &mut failures,
                r.method,
                &path,
                i,
                r.expect[i],
                status,
                &answer,
            );
        }
    }
    assert_no_mismatch(&failures);
}

/// Records a mismatch between the expected and the answered status; any error must have a
/// JSON body.
fn check(
    failures: &mut Vec<String>,
    method: &str,
    path: &str,
    caller: usize,
    expected: u16,
    status: u16,
    answer: &Value,
) {
    if status != expected {
        failures.push(format!(
            "{} {path} as {}: expected {expected}, got {status} {answer}",
            method.to_uppercase(),
            CALLERS[caller],
        ));
    }
    if status >= 400 {
        assert!(
            answer["error"]["code"].is_string(),
            "{path}: error without a JSON body: {answer}"
        );
    }
}

/// Deactivates the `deactivated` caller (after the fixtures that need it as a member).
async fn deactivate_gone(api: &Api) {
    ok(api, Method::POST, "/v1/users/gone/deactivate", "boss", None).await;
}

fn assert_no_mismatch(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn matrix_covers_every_documented_route() {
    let node = node();
    let api = Api::new(&node);
    let (s, doc) = api.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(s, 200);
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in ["get", "post", "put", "patch", "delete"] {
            if item.get(m).is_some() {
                documented.insert((m.to_owned(), path.clone()));
            }
        }
    }
    let covered: BTreeSet<(String, String)> = rows()
        .iter()
        .map(|r| (r.method.to_owned(), r.api.to_owned()))
        .chain(extra_rows().into_iter())
        .collect();
    let missing: Vec<_> = documented.difference(&covered).collect();
    let stale: Vec<_> = covered.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes without authorization rows: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "rows for routes the API does not document: {stale:?}"
    );
    // Every documented operation says how it authenticates or is deliberately public.
    let public: BTreeSet<&str> = ["/healthz", "/v1/login"].into();
    for (m, p) in &documented {
        let op = &doc["paths"][p][m];
        assert!(
            public.contains(p.as_str()) || op["security"].is_array(),
            "{m} {p} has no security requirement in the OpenAPI document"
        );
    }
}

/// Routes covered by matrices other than [`rows`]: the files API, whose requests are not JSON.
fn extra_rows() -> Vec<(String, String)> {
    FILE_ROWS
        .iter()
        .map(|(m, api, _, _)| ((*m).to_owned(), (*api).to_owned()))
        .collect()
}

/// The files API: (method, OpenAPI path, request path, expectations). `{f}` is a file the
/// member uploaded and shared in the fixture group; the upload row sends a small PNG.
const FILE_ROWS: [(&str, &str, &str, [u16; 10]); 3] = [
    (
        "post",
        "/v1/files",
        "/v1/files?name=chart.png",
        [401, 401, 401, 201, 201, 201, 201, 201, 201, 201],
    ),
    (
        "get",
        "/v1/files/{id}",
        "/v1/files/{f}",
        [401, 401, 401, 403, 403, 200, 200, 200, 200, 200],
    ),
    (
        "get",
        "/v1/files/{id}/meta",
        "/v1/files/{f}/meta",
        [401, 401, 401, 403, 403, 200, 200, 200, 200, 200],
    ),
];

/// A tiny PNG (the signature and an IHDR chunk are enough for the server, which does not
/// decode images).
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";

#[tokio::test]
async fn every_file_route_against_every_caller() {
    let node = node();
    let api = Api::new(&node);
    directory(&api).await;
    let g = fixture_group(&api, "Files fixture").await;
    let (s, att) = api
        .upload("mem", "report.png", "image/png", PNG.to_vec())
        .await;
    assert_eq!(s, 201, "{att}");
    let file_id = att["file_id"].as_str().unwrap().to_owned();
    let mut member = Client::connect(&node, "mem").await;
    member
        .send(&ClientFrame::Send(protocol::SendFrame {
            rid: Some("share".into()),
            client_msg_id: "share".into(),
            to: protocol::Target::Group(GroupId::new(&g)),
            kind: protocol::MessageKind::Image,
            body: String::new(),
            attachment: Some(serde_json::from_value(att.clone()).unwrap()),
            mentions: vec![],
            reply_to: None,
        }))
        .await;
    let ack = member
        .recv_until(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
        .await;
    ack_seq(&ack);
    deactivate_gone(&api).await;
    let mut failures = Vec::new();
    for (m, _, path, expect) in FILE_ROWS {
        let path = path.replace("{f}", &file_id);
        for i in 0..CALLERS.len() {
            let (status, answer) = if m == "post" {
                api.upload_token(bearer(i).as_deref(), "chart.png", "image/png", PNG.to_vec())
                    .await
            } else {
                let mut req = api.http.get(format!("{}{path}", api.base));
                if let Some(t) = bearer(i) {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.unwrap();
                let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if status == 200 && !path.ends_with("/meta") {
                    assert_eq!(&bytes[..], PNG, "{path} as {}", CALLERS[i]);
                }
                (status, json)
            };
            check(&mut failures, m, &path, i, expect[i], status, &answer);
        }
    }
    assert_no_mismatch(&failures);
}

/// What a WebSocket operation answered: a reply type, or an error code.
fn outcome(f: &ServerFrame) -> String {
    match f {
        ServerFrame::Error { code, .. } => code.as_str().to_owned(),
        ServerFrame::Ack { .. } => "ack".into(),
        ServerFrame::History { .. } => "history".into(),
        ServerFrame::Synced { .. } => "synced".into(),
        ServerFrame::Conversations { .. } => "conversations".into(),
        ServerFrame::Recalled { .. } => "recalled".into(),
        ServerFrame::Pong { .. } => "pong".into(),
        other => format!("{other:?}"),
    }
}

/// The WebSocket half of the matrix: one row per client frame type (its `type` tag), with the
/// expected reply type or error code for [external, nonmember, member, muted, admin, owner,
/// company_admin]; the callers without a valid token are refused before the upgrade. Every
/// `ClientFrame` type must have a row (`ws_matrix_covers_every_client_frame`).
fn ws_rows() -> Vec<(&'static str, [&'static str; 7])> {
    vec![
        (
            "send",
            [
                "forbidden",
                "forbidden",
                "ack",
                "muted",
                "ack",
                "ack",
                "forbidden",
            ],
        ),
        (
            "history",
            [
                "forbidden",
                "forbidden",
                "history",
                "history",
                "history",
                "history",
                "forbidden",
            ],
        ),
        (
            "sync",
            [
                "forbidden",
                "forbidden",
                "synced",
                "synced",
                "synced",
                "synced",
                "forbidden",
            ],
        ),
        (
            "read",
            [
                "forbidden",
                "forbidden",
                "pong",
                "pong",
                "pong",
                "pong",
                "forbidden",
            ],
        ),
        (
            "typing",
            [
                "forbidden",
                "forbidden",
                "pong",
                "pong",
                "pong",
                "pong",
                "forbidden",
            ],
        ),
        ("conversations", ["conversations"; 7]),
        (
            "recall",
            [
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "recalled",
                "recalled",
                "recalled",
            ],
        ),
        ("ping", ["pong"; 7]),
    ]
}

/// The frame a WebSocket row sends. An operation without a frame here fails the test (it used
/// to become a `ping` silently).
fn ws_frame(op: &str, rid: &str, group: &str, conv: &ConvId, i: usize) -> ClientFrame {
    let rid = Some(rid.to_owned());
    let frame = match op {
        "send" => ClientFrame::Send(protocol::SendFrame {
            rid: rid.clone(),
            client_msg_id: rid.clone().unwrap_or_default(),
            to: protocol::Target::Group(GroupId::new(group)),
            kind: protocol::MessageKind::Text,
            body: "hi".into(),
            attachment: None,
            mentions: vec![],
            reply_to: None,
        }),
        "history" => ClientFrame::History {
            rid,
            conv: conv.clone(),
            before_seq: None,
            limit: None,
        },
        "sync" => ClientFrame::Sync {
            rid,
            cursors: BTreeMap::from([(conv.clone(), Seq(0))]),
            limit: None,
        },
        "read" => ClientFrame::Read {
            rid,
            conv: conv.clone(),
            seq: Seq(1),
        },
        "typing" => ClientFrame::Typing { conv: conv.clone() },
        "conversations" => ClientFrame::Conversations { rid },
        "recall" => ClientFrame::Recall {
            rid,
            conv: conv.clone(),
            seq: Seq(i as u64 + 1),
        },
        "ping" => ClientFrame::Ping { rid },
        other => panic!("the WebSocket matrix has no frame for operation {other:?}"),
    };
    assert_eq!(
        frame.type_name(),
        op,
        "row {op:?} builds another frame type"
    );
    frame
}

#[test]
fn ws_matrix_covers_every_client_frame() {
    let rows: Vec<&str> = ws_rows().iter().map(|(op, _)| *op).collect();
    let covered: BTreeSet<&str> = rows.iter().copied().collect();
    assert_eq!(
        covered.len(),
        rows.len(),
        "duplicate WebSocket rows: {rows:?}"
    );
    let frames: BTreeSet<&str> = ClientFrame::TYPES.iter().copied().collect();
    let missing: Vec<_> = frames.difference(&covered).collect();
    let stale: Vec<_> = covered.difference(&frames).collect();
    assert!(
        missing.is_empty(),
        "client frame types without authorization rows: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "rows for operations that are not client frames: {stale:?}"
    );
    // Every row builds its own frame type (an unknown operation panics).
    let conv = ConvId::group(&GroupId::new("g"));
    for op in rows {
        ws_frame(op, "r", "g", &conv, 0);
    }
}

#[tokio::test]
async fn every_websocket_operation_against_every_caller() {
    let node = node();
    let api = Api::new(&node);
    directory(&api).await;
    let g = fixture_group(&api, "WS fixture").await;
    // One message per caller to recall, sent by the owner, and one by the member.
    let mut owner = Client::connect(&node, "own").await;
    for i in 0..10 {
        ack_seq(&owner.send_group(&g, &format!("r{i}"), "recall me").await);
    }
    deactivate_gone(&api).await;

    // Connecting: refused before the upgrade without a valid token of an active account.
    let url = format!("ws://{}/ws", node.addr);
    for i in 0..3 {
        let refusal = Client::try_connect_raw(&url, bearer(i).as_deref())
            .await
            .expect_err("must be refused");
        assert_eq!(refusal.status, 401, "{}: {}", CALLERS[i], refusal.body);
        assert!(refusal.body.contains("unauthorized"), "{}", refusal.body);
    }

    let conv = ConvId::group(&GroupId::new(&g));
    let ops = ws_rows();
    let mut failures = Vec::new();
    for i in 3..CALLERS.len() {
        let user = user_of(i).unwrap();
        let mut c = Client::connect(&node, user).await;
        for (op, expect) in &ops {
            let rid = format!("{op}-{i}");
            let frame = ws_frame(op, &rid, &g, &conv, i);
            c.send(&frame).await;
            // read and typing answer nothing on success: a ping right after them is answered
            // in order, so a pong first means they were accepted.
            let follow = format!("after-{rid}");
            if matches!(*op, "read" | "typing") {
                c.send(&ClientFrame::Ping {
                    rid: Some(follow.clone()),
                })
                .await;
            }
            let reply = c
                .recv_until(|f| match f {
                    ServerFrame::Error { .. } => true,
                    ServerFrame::Pong { rid: Some(r) } => *r == rid || *r == follow,
                    ServerFrame::Ack { rid: Some(r), .. }
                    | ServerFrame::History { rid: Some(r), .. }
                    | ServerFrame::Synced { rid: Some(r), .. }
                    | ServerFrame::Conversations { rid: Some(r), .. }
                    | ServerFrame::Recalled { rid: Some(r), .. } => *r == rid,
                    _ => false,
                })
                .await;
            let got = outcome(&reply);
            let want = expect[i - 3];
            if got != want {
                failures.push(format!(
                    "{op} as {}: expected {want}, got {got}",
                    CALLERS[i]
                ));
            }
            if let ServerFrame::Error { code, .. } = reply {
                assert_ne!(code, ErrorCode::Internal, "{op} as {}", CALLERS[i]);
            }
        }
    }
    assert_no_mismatch(&failures);
}
