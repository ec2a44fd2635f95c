//! The dashboard in a real browser: Redis with the module and the gateway as the other tests
//! start them, known traffic over a dozen (pinned) minutes, then headless Chromium driven
//! through chromedriver (WebDriver): a wrong key shows the 401 and signs nothing in; the admin
//! key shows the numbers `/analytics` gives; an unblock from the page unblocks; a limit set
//! from the page applies to the next request; a key rotated and a user deleted from the page
//! stop working; Redis stopped shows the 503. A screenshot goes
//! to `target/dashboard.png` (and to `docs/dashboard.png` with `DASHBOARD_SCREENSHOT=docs`).
//! Without Chromium and chromedriver the test says so and passes, except under `CI=true`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ADMIN, Body, Gateway, config, policy};
use fantoccini::{Client, ClientBuilder, Locator};
use ratelimit_testkit::{Server, ci, free_port};
use serde_json::{Value, json};

const POST_BODY: &str = r#"{"request_type": "search"}"#;

/// A program of that name on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// chromedriver serving on a free port, in its own process group (with the browsers it
/// starts), all killed by that group's id when dropped.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start(program: &Path) -> ChromeDriver {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let driver = ChromeDriver { child, port };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return driver;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("chromedriver did not listen on {port} within 10 s");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        if let Ok(group) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with the id of the group this test created; no memory involved.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// A headless Chromium session.
async fn browser(driver: &ChromeDriver, chromium: &Path) -> Client {
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1150", "--lang=en-US"],
        },
    });
    let capabilities = capabilities.as_object().cloned().expect("a JSON object");
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url())
        .await
        .expect("a WebDriver session")
}

/// What a script returns in the page (JSON).
async fn eval(c: &Client, script: &str) -> Value {
    c.execute(script, Vec::new()).await.expect(script)
}

/// Waits up to 15 s for `script` to return something other than `null` or `false`; that.
async fn until(c: &Client, script: &str) -> Value {
    for _ in 0..150 {
        let value = eval(c, script).await;
        if !matches!(value, Value::Null | Value::Bool(false)) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page never satisfied: {script}");
}

/// Clicks the element `css`. The page redraws its tables every 5 s: an element found just
/// before a redraw is stale by the click, so it is found again (5 times at most).
async fn click(c: &Client, css: &str) {
    for _ in 0..5 {
        if let Ok(element) = c.find(Locator::Css(css)).await
            && element.click().await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not click {css}");
}

/// Types into the input `css` (found again if a redraw took it; once typing, the page leaves
/// the table alone).
async fn type_into(c: &Client, css: &str, keys: &str) {
    for _ in 0..5 {
        if let Ok(element) = c.find(Locator::Css(css)).await
            && element.send_keys(keys).await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not type into {css}");
}

/// The text of the element `css`, or `null`.
fn text(css: &str) -> String {
    format!("const e = document.querySelector({css:?}); return e ? e.textContent : null;")
}

/// The rows of a table body as lists of cell texts.
fn rows(css: &str) -> String {
    format!(
        "return [...document.querySelectorAll({:?})].map(r => [...r.cells].map(c => c.textContent));",
        format!("{css} tr")
    )
}

#[tokio::test]
async fn the_dashboard_shows_analytics_and_changes_blocks_and_limits() {
    let (Some(driver), Some(chromium)) = (on_path("chromedriver"), on_path("chromium")) else {
        ci::missing(
            "the_dashboard_shows_analytics_and_changes_blocks_and_limits",
            "chromium and chromedriver (apt-get install chromium chromium-driver; \
             scripts/install-deps.sh does)",
        );
        return;
    };
    let mut server = Server::start();
    let mut cfg = config(&server);
    cfg.default_limit = policy("fixed:3:1m");
    let gw = Gateway::start(cfg).await;
    let (alice, alice_key) = gw.user("alice", "user").await;
    let (bob, bob_key) = gw.user("bob", "user").await;
    let (carol, carol_key) = gw.user("carol", "admin").await;

    // A dozen minutes of traffic: alice asks 5 a minute (3 allowed, 2 denied), bob 1 to 3.
    for minute in 0..12u64 {
        for _ in 0..5 {
            gw.from("203.0.113.10")
                .send("POST", "/requests", Some(&alice_key), Some(POST_BODY))
                .await;
        }
        for _ in 0..(1 + minute % 3) {
            gw.from("203.0.113.20")
                .send("POST", "/requests", Some(&bob_key), Some(POST_BODY))
                .await;
        }
        server.clock.advance(60_000);
    }
    // This minute: alice at her limit, bob once.
    for _ in 0..4 {
        gw.from("203.0.113.10")
            .send("POST", "/requests", Some(&alice_key), Some(POST_BODY))
            .await;
    }
    gw.from("203.0.113.20")
        .send("POST", "/requests", Some(&bob_key), Some(POST_BODY))
        .await;
    let blocked_ip = "198.51.100.7";
    let put = gw
        .send(
            "PUT",
            &format!("/blocks/{blocked_ip}"),
            Some(ADMIN),
            Some(r#"{"duration": "10m"}"#),
        )
        .await;
    assert_eq!(put.status, 200);
    let from_blocked = || gw.from(blocked_ip);
    let history = format!("/requests/{bob}");
    let reply = from_blocked()
        .send("GET", &history, Some(&bob_key), None)
        .await;
    assert_eq!(
        (reply.status, reply.problem().as_str()),
        (403, "ip-blocked")
    );

    let driver = ChromeDriver::start(&driver);
    let c = browser(&driver, &chromium).await;
    let base = format!("http://{}", gw.addr);

    // `/` leads to the dashboard, which asks for a key.
    c.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/dashboard");
    until(&c, "return !document.getElementById('sign-in').hidden;").await;

    // A wrong key: the 401 is shown, nothing is kept, the board stays hidden.
    let key_field = c.find(Locator::Id("key")).await.unwrap();
    key_field.send_keys("rlk_not-a-key").await.unwrap();
    click(&c, "#sign-in-button").await;
    let error = until(&c, &text("#error:not([hidden])")).await;
    assert_eq!(error, "401 Unauthorized: unknown API key");
    let shown = c.find(Locator::Id("error")).await.unwrap();
    assert!(shown.is_displayed().await.unwrap());
    assert_eq!(eval(&c, "return sessionStorage.length;").await, 0);
    assert_eq!(
        eval(&c, "return document.getElementById('board').hidden;").await,
        true
    );

    // A user's key that is not an admin's: the 403, signed out again.
    type_into(&c, "#key", &alice_key).await;
    click(&c, "#sign-in-button").await;
    let error = until(
        &c,
        "const e = document.getElementById('error'); \
         return e.textContent.startsWith('403') ? e.textContent : null;",
    )
    .await;
    assert_eq!(error, "403 Forbidden: this route is for admins");
    assert_eq!(eval(&c, "return sessionStorage.length;").await, 0);
    let sign_in = c.find(Locator::Id("sign-in")).await.unwrap();
    assert!(sign_in.is_displayed().await.unwrap());

    // The admin's key: the board, with what /analytics says.
    let key_field = c.find(Locator::Id("key")).await.unwrap();
    key_field.send_keys(ADMIN).await.unwrap();
    click(&c, "#sign-in-button").await;
    until(
        &c,
        "return !document.getElementById('board').hidden && \
         document.querySelectorAll('#users tr').length === 3;",
    )
    .await;
    assert_eq!(
        eval(&c, "return document.getElementById('error').hidden;").await,
        true
    );
    let sign_in = c.find(Locator::Id("sign-in")).await.unwrap();
    assert!(
        !sign_in.is_displayed().await.unwrap(),
        "the sign-in form is hidden"
    );
    // The key is in the tab's session storage, never in the URL.
    assert_eq!(
        eval(
            &c,
            "return sessionStorage.getItem('ratelimit-gateway.admin-key');"
        )
        .await,
        ADMIN
    );
    let url = c.current_url().await.unwrap();
    assert_eq!((url.path(), url.query()), ("/dashboard", None));

    let analytics = gw.send("GET", "/analytics", Some(ADMIN), None).await.json();
    let figure = |n: &Value| n.as_u64().unwrap().to_string();
    let shown = eval(
        &c,
        "return ['allowed-minute', 'denied-minute', 'allowed-hour', 'denied-hour']\
         .map(id => document.getElementById(id).textContent);",
    )
    .await;
    let windows = &analytics["windows"];
    assert_eq!(
        shown,
        json!([
            figure(&windows[0]["allowed"]),
            figure(&windows[0]["denied"]),
            figure(&windows[1]["allowed"]),
            figure(&windows[1]["denied"]),
        ])
    );
    // Alice: 12 × (3 allowed, 2 denied) + (3, 1); bob: 24 + 1, never denied.
    assert_eq!(shown, json!(["4", "1", "64", "25"]));
    let top_users: Vec<Value> = analytics["most_denied_users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let id = u["user_id"].as_u64().unwrap();
            let name = if id == alice { "alice" } else { "?" };
            json!([id.to_string(), name, figure(&u["denied"])])
        })
        .collect();
    assert_eq!(eval(&c, &rows("#top-users")).await, json!(top_users));
    assert_eq!(top_users, [json!([alice.to_string(), "alice", "25"])]);
    let top_ips: Vec<Value> = analytics["most_denied_ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| json!([ip["ip"], figure(&ip["denied"])]))
        .collect();
    assert_eq!(eval(&c, &rows("#top-ips")).await, json!(top_ips));
    // One bar of each colour for each minute with such requests (13 of them).
    let bars = eval(
        &c,
        "return ['allowed', 'denied'].map(k => \
         document.querySelectorAll('#chart rect.bar-' + k).length);",
    )
    .await;
    let with = |what: &str| {
        analytics["per_minute"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m[what].as_u64().unwrap() > 0)
            .count()
    };
    assert_eq!(bars, json!([with("allowed"), with("denied")]));
    assert_eq!(bars, json!([13, 13]));
    // Users with their limits and usage.
    assert_eq!(
        eval(&c, &rows("#users")).await[0]
            .as_array()
            .unwrap()
            .iter()
            .take(6)
            .cloned()
            .collect::<Vec<_>>(),
        [
            json!(alice.to_string()),
            json!("alice"),
            json!("user"),
            json!("fixed:3:1m (default)"),
            json!("3 allowed, 1 denied"),
            json!("39 allowed, 25 denied"),
        ]
    );
    // The block, with its reason and time left.
    assert_eq!(
        eval(&c, &rows("#blocks")).await,
        json!([[blocked_ip, "manual", "10m 0s", "Unblock"]])
    );

    let shot = c.screenshot().await.unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    std::fs::write(target.join("dashboard.png"), &shot).unwrap();
    if std::env::var("DASHBOARD_SCREENSHOT").is_ok_and(|v| v == "docs") {
        std::fs::write(root.join("docs/dashboard.png"), &shot).unwrap();
    }

    // Unblocked from the page: the next request from that IP passes.
    let unblock = format!("#blocks tr[data-ip=\"{blocked_ip}\"] button");
    click(&c, &unblock).await;
    until(
        &c,
        "return document.querySelectorAll('#blocks tr').length === 0;",
    )
    .await;
    let reply = from_blocked()
        .send("GET", &history, Some(&bob_key), None)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");

    // A limit set from the page applies to the next request: alice, denied at 3, passes at 10.
    let denied = gw
        .send("POST", "/requests", Some(&alice_key), Some(POST_BODY))
        .await;
    assert_eq!(denied.status, 429);
    let row = format!("#users tr[data-user-id=\"{alice}\"]");
    type_into(&c, &format!("{row} input.new-limit"), "fixed:10:1m").await;
    click(&c, &format!("{row} button[data-action=\"set-limit\"]")).await;
    until(
        &c,
        &format!(
            "const e = document.querySelector('{row} td.limit'); \
             return e && e.textContent === 'fixed:10:1m';"
        ),
    )
    .await;
    let allowed = gw
        .send("POST", "/requests", Some(&alice_key), Some(POST_BODY))
        .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(
        allowed.header("ratelimit-policy"),
        Some(r#""user";q=10;w=60, "ip";q=1000;w=60"#)
    );

    // A new key from the page: shown once there; the old key is refused, the new one works.
    let row = format!("#users tr[data-user-id=\"{bob}\"]");
    click(&c, &format!("{row} button[data-action=\"rotate\"]")).await;
    let notice = until(
        &c,
        "const e = document.getElementById('notice'); \
         return e.textContent.startsWith('New API key') ? e.textContent : null;",
    )
    .await;
    let notice = notice.as_str().unwrap();
    let new_key = notice
        .strip_prefix("New API key of bob (shown once): ")
        .unwrap_or_else(|| panic!("{notice}"));
    let old = gw.send("GET", &history, Some(&bob_key), None).await;
    assert_eq!((old.status, old.problem().as_str()), (401, "unauthorized"));
    assert_eq!(
        gw.send("GET", &history, Some(new_key), None).await.status,
        200
    );

    // Deleted from the page (the second click confirms): gone from the page and the API.
    let row = format!("#users tr[data-user-id=\"{carol}\"]");
    let delete = format!("{row} button[data-action=\"delete\"]");
    click(&c, &delete).await;
    until(
        &c,
        &format!("const b = document.querySelector('{delete}'); return b && b.textContent === 'Confirm delete';"),
    )
    .await;
    assert_eq!(
        eval(&c, "return document.querySelectorAll('#users tr').length;").await,
        3
    );
    click(&c, &delete).await;
    until(
        &c,
        "return document.querySelectorAll('#users tr').length === 2;",
    )
    .await;
    let reply = gw
        .send("GET", &format!("/rate_limits/{carol}"), Some(ADMIN), None)
        .await;
    assert_eq!((reply.status, reply.problem().as_str()), (404, "not-found"));
    let reply = gw.send("GET", "/blocks", Some(&carol_key), None).await;
    assert_eq!(
        (reply.status, reply.problem().as_str()),
        (401, "unauthorized")
    );

    // Redis stopped: the page says 503 (and keeps the board and the key to try again).
    server.kill();
    let error = until(&c, &text("#error:not([hidden])")).await;
    assert!(
        error
            .as_str()
            .unwrap()
            .starts_with("503 Service Unavailable: "),
        "{error}"
    );
    assert_eq!(
        eval(&c, "return document.getElementById('board').hidden;").await,
        false
    );
    c.close().await.unwrap();
}
