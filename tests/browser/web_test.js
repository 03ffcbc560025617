// The web page in a real browser: headless Chromium (Debian's /usr/bin/chromium, never a
// downloaded one) driven by playwright-core.
//
//   node tests/browser/web_test.js BASE_URL SHOT_DIR [README_SHOT]
//
// BASE_URL is a running stack (tests/integration/browser_test.py starts one, with
// throttle.max_failures = 3 and throttle.base_delay = 30s). Prints "ok   <check>" or "FAIL <check>: detail" per check,
// saves screenshots into SHOT_DIR (and the page's first view into README_SHOT when given),
// and exits 1 when any check failed. Any console error, page error or HTTP error answer the
// step did not expect is a failure.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const [base, shotDir, readmeShot] = process.argv.slice(2);
if (!base || !shotDir) {
  console.error('usage: node web_test.js BASE_URL SHOT_DIR [README_SHOT]');
  process.exit(2);
}
fs.mkdirSync(shotDir, { recursive: true });

const PASSWORD = 'correct horse battery staple';
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const tag = Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
const email = `web-${tag}@example.com`;

let nok = 0;
let nbad = 0;
function check(what, cond, detail) {
  if (cond) {
    nok++;
    console.log('ok   ' + what);
  } else {
    nbad++;
    console.log('FAIL ' + what + (detail !== undefined ? ': ' + detail : ''));
  }
  return cond;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// HTTP error answers a step expects ("METHOD /path STATUS"); Chromium logs each one as a
// console error ("Failed to load resource: ..."), which is then not a failure either.
let expected = new Set();
const unexpected = [];
const apiRequests = [];

function pathOf(url) {
  try {
    return new URL(url).pathname;
  } catch (e) {
    return url;
  }
}

async function main() {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
      '--disable-sync',
    ],
  });
  console.log('# chromium ' + browser.version());
  const context = await browser.newContext({ viewport: { width: 1100, height: 780 } });
  const page = await context.newPage();
  const shot = async (name) => {
    const p = path.join(shotDir, name + '.png');
    await page.screenshot({ path: p, fullPage: true });
    return p;
  };

  const lastStatus = new Map(); // url path -> the status of its latest answer
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const loc = m.location() || {};
    const st = /status of (\d{3})/.exec(m.text());
    if (st && loc.url) {
      const p = pathOf(loc.url);
      for (const e of expected) if (e.endsWith(' ' + p + ' ' + st[1])) return;
    }
    unexpected.push('console error: ' + m.text() + (loc.url ? ' (' + loc.url + ')' : ''));
  });
  page.on('pageerror', (e) => unexpected.push('page error: ' + e.message));
  page.on('request', (r) => {
    if (pathOf(r.url()).startsWith('/api/')) apiRequests.push(r.method() + ' ' + pathOf(r.url()));
  });
  page.on('requestfailed', (r) => {
    unexpected.push('request failed: ' + r.method() + ' ' + r.url() + ' ' + (r.failure() || {}).errorText);
  });
  page.on('response', (r) => {
    const key = r.request().method() + ' ' + pathOf(r.url()) + ' ' + r.status();
    lastStatus.set(pathOf(r.url()), r.status());
    if (r.status() >= 400 && !expected.has(key)) unexpected.push('unexpected answer: ' + key);
  });

  const text = (sel) => page.locator(sel).innerText();
  const visible = (sel) => page.locator(sel).isVisible();
  const api = context.request;
  const validate = (token) =>
    api.get(base + '/api/auth/validate', { headers: { Authorization: 'Bearer ' + token } });
  const storedToken = () => page.evaluate(() => sessionStorage.getItem('latchkey.token'));

  // ---- the page ----------------------------------------------------------------------
  const resp = await page.goto(base + '/', { waitUntil: 'load' });
  check('GET / answers 200 text/html', resp.status() === 200 &&
        (resp.headers()['content-type'] || '').startsWith('text/html'), resp.status());
  check('title', (await page.title()).includes('latchkey'), await page.title());
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll('input')].filter((i) => i.labels.length === 0).map((i) => i.id));
  check('every input has a label', unlabelled.length === 0, unlabelled.join(','));
  check('labelled fields found by their label', (await page.getByLabel('Email address').count()) === 2 &&
        (await page.getByLabel('Password').count()) === 2);
  const live = await page.evaluate(() =>
    [...document.querySelectorAll('[aria-live]')].map((e) => e.id + ':' + e.getAttribute('aria-live')));
  check('errors and results are announced (aria-live regions)', live.includes('alert:assertive') &&
        live.includes('status:polite') && live.includes('signup-password-error:polite'), live.join(' '));
  check('the icon is a fingerprinted asset', /\/assets\/icon\.[0-9a-f]{16}\.svg$/.test(
    await page.evaluate(() => document.querySelector('link[rel=icon]').href)));
  const p1 = await shot('01-page');
  if (readmeShot) {
    fs.mkdirSync(path.dirname(readmeShot), { recursive: true });
    fs.copyFileSync(p1, readmeShot);
  }

  // ---- client-side checks, debounced ---------------------------------------------------
  // Timing read inside the page, with its own timers: one set after the page's 300 ms
  // debounce timer fires before it when shorter and after it when longer, however loaded
  // the machine is.
  const debounce = await page.evaluate(() => new Promise((resolve) => {
    const input = document.getElementById('signup-email');
    const err = document.getElementById('signup-email-error');
    input.focus();
    input.value = 'not-an-email';
    input.dispatchEvent(new Event('input', { bubbles: true }));
    const seen = [err.textContent];
    setTimeout(() => seen.push(err.textContent), 200);
    setTimeout(() => { seen.push(err.textContent); resolve(seen); }, 400);
  }));
  check('email check waits for a 300 ms pause in typing (debounced)', debounce[0] === '' &&
        debounce[1] === '' && /valid email/.test(debounce[2]), JSON.stringify(debounce));
  check('invalid field marked aria-invalid',
        (await page.getAttribute('#signup-email', 'aria-invalid')) === 'true');
  const settles = (sel, re) => page.waitForFunction(([s, r]) =>
    new RegExp(r).test(document.querySelector(s).textContent), [sel, re], { timeout: 5000 })
    .then(() => true, () => false);
  await page.fill('#signup-email', email);
  check('a valid email clears the message', await settles('#signup-email-error', '^$'));
  await page.fill('#signup-password', 'short');
  await settles('#signup-password-error', 'at least 8');
  await page.fill('#signup-password', '\u{1F511}'.repeat(8)); // 8 code points, 16 UTF-16 units
  check('8 code points (emoji) are enough', await settles('#signup-password-error', '^$'),
        await text('#signup-password-error'));

  // ---- a too-short password is blocked before any request -----------------------------
  await page.fill('#signup-password', 'short7!');
  check('too-short password message while typing', await settles('#signup-password-error', 'at least 8 characters'),
        await text('#signup-password-error'));
  const before = apiRequests.length;
  await page.click('#signup-submit');
  await sleep(600);
  check('too-short password: no request sent', apiRequests.length === before,
        apiRequests.slice(before).join(', '));
  check('too-short password: the error is announced', /correct the highlighted field/.test(await text('#alert')),
        await text('#alert'));
  check('too-short password: focus moves to the field',
        (await page.evaluate(() => document.activeElement.id)) === 'signup-password');
  await shot('02-too-short');

  // ---- sign up --------------------------------------------------------------------------
  await page.fill('#signup-password', PASSWORD);
  const [su] = await Promise.all([
    page.waitForResponse((r) => pathOf(r.url()) === '/api/auth/signup'),
    page.click('#signup-submit'),
  ]);
  check('sign up: 201', su.status() === 201, su.status());
  await page.waitForFunction(() => document.getElementById('status').textContent !== '');
  check('sign up: success announced', (await text('#status')).includes('Account created for ' + email),
        await text('#status'));
  check('sign up: the sign-in form gets the email',
        (await page.inputValue('#signin-email')) === email);
  await shot('03-signed-up');

  // the same email again: 409 email_taken
  expected = new Set(['POST /api/auth/signup 409']);
  await page.fill('#signup-email', email);
  await page.fill('#signup-password', PASSWORD);
  await Promise.all([
    page.waitForResponse((r) => pathOf(r.url()) === '/api/auth/signup'),
    page.click('#signup-submit'),
  ]);
  await page.waitForFunction(() => document.getElementById('alert').textContent !== '');
  check('sign up again: "already exists" message', /already exists/.test(await text('#alert')),
        await text('#alert'));

  // ---- a wrong password ----------------------------------------------------------------
  expected = new Set(['POST /api/auth/signin 401']);
  await page.fill('#signin-email', email);
  await page.fill('#signin-password', 'not the right password');
  const [wr] = await Promise.all([
    page.waitForResponse((r) => pathOf(r.url()) === '/api/auth/signin'),
    page.click('#signin-submit'),
  ]);
  await page.waitForFunction(() => document.getElementById('alert').textContent !== '');
  check('wrong password: 401 invalid_credentials', wr.status() === 401, wr.status());
  check('wrong password: "Wrong email or password." announced',
        (await text('#alert')) === 'Wrong email or password.', await text('#alert'));
  check('wrong password: still signed out', !(await visible('#session')) && (await storedToken()) === null);
  await shot('04-wrong-password');
  expected = new Set();

  // ---- sign in, see the session ----------------------------------------------------------
  await page.fill('#signin-password', PASSWORD);
  const [si] = await Promise.all([
    page.waitForResponse((r) => pathOf(r.url()) === '/api/auth/signin'),
    page.click('#signin-submit'),
  ]);
  check('sign in: 200', si.status() === 200, si.status());
  await page.waitForSelector('#session', { state: 'visible' });
  const token1 = await storedToken();
  check('sign in: token kept in sessionStorage', typeof token1 === 'string' && token1.length === 43);
  check('session: email shown', (await text('#session-email')) === email, await text('#session-email'));
  const uid = await text('#session-user');
  check('session: user id shown', UUID_RE.test(uid), uid);
  const v1 = await validate(token1);
  const vb = await v1.json();
  check('session: the user id is the API\'s', v1.status() === 200 && vb.userId === uid, JSON.stringify(vb));
  const c1 = await text('#session-countdown');
  await sleep(1300);
  const c2 = await text('#session-countdown');
  check('session: countdown to expiry runs', /^in (\d+ d )?\d+ h \d+ min \d+ s$/.test(c1) && c1 !== c2,
        JSON.stringify([c1, c2]));
  check('session: forms hidden', !(await visible('#forms')));
  check('session: focus on the session heading',
        (await page.evaluate(() => document.activeElement.id)) === 'session-title');
  await shot('05-session');
  await page.reload({ waitUntil: 'load' });
  await page.waitForSelector('#session', { state: 'visible' });
  check('session: survives a reload of the tab', (await text('#session-email')) === email);

  // ---- sign out -----------------------------------------------------------------------------
  const [so] = await Promise.all([
    page.waitForResponse((r) => pathOf(r.url()) === '/api/auth/signout'),
    page.click('#signout'),
  ]);
  check('sign out: 204', so.status() === 204, so.status());
  await page.waitForSelector('#forms', { state: 'visible' });
  check('sign out: announced', (await text('#status')) === 'Signed out.', await text('#status'));
  check('sign out: token forgotten', (await storedToken()) === null);
  check('sign out: the token no longer validates', (await validate(token1)).status() === 401);
  await shot('06-signed-out');

  // ---- keyboard-only sign in (Tab and typing, Enter) -----------------------------------
  await page.goto(base + '/', { waitUntil: 'load' });
  let tabs = 0;
  let at = '';
  while (tabs < 20 && at !== 'signin-email') {
    await page.keyboard.press('Tab');
    tabs++;
    at = await page.evaluate(() => document.activeElement && document.activeElement.id);
  }
  check('keyboard: Tab reaches the sign-in email (' + tabs + ' presses)', at === 'signin-email', at);
  const ring = await page.evaluate(() => {
    const s = getComputedStyle(document.activeElement);
    return s.outlineStyle + ' ' + s.outlineWidth;
  });
  check('keyboard: focus is visible', !/^none/.test(ring) && !/ 0px$/.test(ring), ring);
  await page.keyboard.type(email);
  await page.keyboard.press('Tab');
  check('keyboard: Tab moves to the password',
        (await page.evaluate(() => document.activeElement.id)) === 'signin-password');
  await page.keyboard.type(PASSWORD);
  await Promise.all([
    page.waitForResponse((r) => pathOf(r.url()) === '/api/auth/signin'),
    page.keyboard.press('Enter'),
  ]);
  await page.waitForSelector('#session', { state: 'visible' });
  check('keyboard: signed in with Enter', (await text('#session-email')) === email);
  let k = 0;
  at = '';
  while (k < 6 && at !== 'signout') {
    await page.keyboard.press('Tab');
    k++;
    at = await page.evaluate(() => document.activeElement.id);
  }
  check('keyboard: Tab reaches "Sign out"', at === 'signout', at);
  await shot('07-keyboard-session');

  // ---- sign out everywhere -----------------------------------------------------------------
  const other = await api.post(base + '/api/auth/signin', { data: { email, password: PASSWORD } });
  const token2 = (await other.json()).token;
  const token3 = await storedToken();
  check('a second session (another device) validates', (await validate(token2)).status() === 200);
  await page.keyboard.press('Tab'); // to "Sign out everywhere", then Enter: keyboard again
  check('keyboard: Tab reaches "Sign out everywhere"',
        (await page.evaluate(() => document.activeElement.id)) === 'signout-all');
  const [sa] = await Promise.all([
    page.waitForResponse((r) => pathOf(r.url()) === '/api/auth/signout-all'),
    page.keyboard.press('Enter'),
  ]);
  check('sign out everywhere: 204', sa.status() === 204, sa.status());
  await page.waitForSelector('#forms', { state: 'visible' });
  check('sign out everywhere: announced', /Signed out everywhere/.test(await text('#status')),
        await text('#status'));
  check('sign out everywhere: this tab\'s token is revoked', (await validate(token3)).status() === 401);
  check('sign out everywhere: the other session is revoked', (await validate(token2)).status() === 401);
  await shot('08-signed-out-everywhere');

  // ---- 429 with the wait from Retry-After ---------------------------------------------------
  // The stack locks an email after 3 failed sign-ins (throttle.max_failures = 3).
  const locked = `locked-${tag}@example.com`;
  expected = new Set(['POST /api/auth/signin 401', 'POST /api/auth/signin 429']);
  let last = null;
  for (let i = 0; i < 6; i++) {
    await page.fill('#signin-email', locked);
    await page.fill('#signin-password', 'wrong password ' + i);
    [last] = await Promise.all([
      page.waitForResponse((r) => pathOf(r.url()) === '/api/auth/signin'),
      page.click('#signin-submit'),
    ]);
    if (last.status() === 429) break;
    await page.waitForFunction(() => !document.getElementById('signin-submit').disabled);
  }
  check('throttled: 429', last && last.status() === 429, last && last.status());
  if (last && last.status() === 429) {
    const ra = parseInt(last.headers()['retry-after'], 10);
    await page.waitForFunction(() => /Too many attempts/.test(document.getElementById('alert').textContent));
    const msg = await text('#alert');
    const m = /wait (\d+) seconds?/.exec(msg);
    check('throttled: the wait from Retry-After is shown', ra >= 2 && m && Math.abs(parseInt(m[1], 10) - ra) <= 1,
          JSON.stringify([ra, msg]));
    check('throttled: the sign-in button waits', await page.isDisabled('#signin-submit'));
    await shot('09-too-many-attempts');
  }
  expected = new Set();

  await sleep(300);
  check('no console error, page error or unexpected HTTP error', unexpected.length === 0,
        unexpected.join(' | '));
  await browser.close();
}

main()
  .catch((e) => {
    check('browser session ran to the end', false, e && e.stack ? e.stack : String(e));
    if (unexpected.length) console.log('# before that: ' + unexpected.join(' | '));
  })
  .finally(() => {
    console.log('screenshots: ' + shotDir);
    console.log(`web_test: ${nok} passed, ${nbad} failed`);
    process.exit(nbad === 0 ? 0 : 1);
  });
