// latchkey's web page: sign up, sign in, see and end the session.
//
// Plain JavaScript, no framework, no build step beyond fingerprinting (SConscript).
// Talks to the API of the same origin (docs: schemas/openapi.yaml).
//
// The token is kept in sessionStorage (key "latchkey.token"): it survives a reload of this
// tab and is forgotten when the tab closes; other tabs and windows never see it. Any script
// running in this origin could read it (an XSS), which is why the page loads no third-party
// code and the gateway forbids inline script with its Content-Security-Policy. README.md
// ("The web page") and docs/security.md discuss the choice.
'use strict';

(function () {
  const TOKEN_KEY = 'latchkey.token';
  const DEBOUNCE_MS = 300;
  // The API's rules (api.md, POST /api/auth/signup), checked here before any request.
  const EMAIL_RE = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;
  const PW_MIN_CHARS = 8; // Unicode code points
  const PW_MAX_BYTES = 1024; // UTF-8 bytes
  const EMAIL_MAX_BYTES = 254;

  const $ = (id) => document.getElementById(id);
  const utf8 = new TextEncoder();
  const el = {
    status: $('status'),
    alert: $('alert'),
    forms: $('forms'),
    session: $('session'),
    sessionTitle: $('session-title'),
    sessionEmail: $('session-email'),
    sessionUser: $('session-user').querySelector('code'),
    sessionExpires: $('session-expires'),
    sessionCountdown: $('session-countdown'),
    signout: $('signout'),
    signoutAll: $('signout-all'),
  };

  let countdownTimer = 0;
  let retryTimer = 0;
  let memoryToken = '';

  // ---- messages ---------------------------------------------------------------------------

  function announce(text) {
    el.alert.textContent = '';
    el.status.textContent = text;
  }

  function fail(text) {
    el.status.textContent = '';
    el.alert.textContent = text;
  }

  function clearMessages() {
    el.status.textContent = '';
    el.alert.textContent = '';
    if (retryTimer) {
      clearInterval(retryTimer);
      retryTimer = 0;
    }
  }

  function seconds(n) {
    return n === 1 ? '1 second' : n + ' seconds';
  }

  function retryAfter(res) {
    const v = parseInt(res.headers.get('Retry-After') || '', 10);
    return Number.isFinite(v) && v > 0 ? v : 1;
  }

  // A clear sentence for every error code of the API (api.md); the server's own message
  // where it says more than the code (weak_password: too short, too common, ...).
  function describe(res, body, action) {
    const code = body && typeof body.error === 'string' ? body.error : '';
    const msg = body && typeof body.message === 'string' ? body.message : '';
    switch (code) {
      case 'invalid_email':
        return 'That email address is not valid. Use the form name@example.com.';
      case 'weak_password':
        return 'That password cannot be used: ' + (msg || 'it is too weak') + '.';
      case 'email_taken':
        return 'An account with that email address already exists. Sign in instead.';
      case 'invalid_credentials':
        return 'Wrong email or password.';
      case 'too_many_attempts':
        return null; // handled by the caller: a live countdown
      case 'invalid_token':
        return 'Your session has ended. Please sign in again.';
      case 'invalid_request':
        return 'The request was refused as malformed' + (msg ? ': ' + msg : '') + '.';
      case 'unavailable':
        return 'The service is temporarily unavailable. Please try again in a moment.';
      case 'timeout':
        return 'The service took too long to answer. Please try again.';
      case 'payload_too_large':
        return 'What you typed is too long.';
      case 'unsupported_media_type':
      case 'method_not_allowed':
      case 'not_found':
        return 'This page and the server disagree (' + code + '). Reload the page.';
      case 'request_timeout':
      case 'headers_too_large':
      case 'uri_too_long':
        return 'The request could not be sent whole (' + code + '). Please try again.';
      case 'internal':
        return 'Something went wrong on the server. Please try again.';
      default:
        return action + ' failed (HTTP ' + res.status + '). Please try again.';
    }
  }

  // 429: says how long to wait, counting down, and keeps the form's button off meanwhile.
  function tooMany(res, button) {
    let left = retryAfter(res);
    const show = () =>
      fail('Too many attempts. Please wait ' + seconds(left) + ' before trying again.');
    show();
    if (button) button.disabled = true;
    retryTimer = setInterval(() => {
      left -= 1;
      if (left <= 0) {
        clearInterval(retryTimer);
        retryTimer = 0;
        if (button) button.disabled = false;
        announce('You can try again now.');
        return;
      }
      // Updated silently: re-announcing every second would drown a screen reader.
      el.alert.setAttribute('aria-live', 'off');
      show();
      el.alert.setAttribute('aria-live', 'assertive');
    }, 1000);
  }

  // ---- the API ----------------------------------------------------------------------------

  async function api(method, path, opts) {
    const headers = {};
    let body;
    if (opts && opts.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.json);
    }
    if (opts && opts.token) headers.Authorization = 'Bearer ' + opts.token;
    let res;
    try {
      res = await fetch(path, { method, headers, body, cache: 'no-store', credentials: 'omit' });
    } catch (e) {
      return { res: null, body: null };
    }
    // The body is always read to its end (an empty one too: a 204's), so that the request
    // completes rather than being cancelled with an unread body.
    let data = null;
    try {
      const text = await res.text();
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    return { res, body: data };
  }

  const UNREACHABLE = 'Cannot reach the server. Check your connection and try again.';

  // ---- client-side checks -----------------------------------------------------------------

  function normEmail(v) {
    return v.trim().replace(/[A-Z]/g, (c) => c.toLowerCase());
  }

  function checkEmail(v) {
    const e = normEmail(v);
    if (e === '') return 'Enter your email address.';
    if (utf8.encode(e).length > EMAIL_MAX_BYTES || e.length < 3 || !EMAIL_RE.test(e))
      return 'Enter a valid email address, such as name@example.com.';
    return '';
  }

  function checkNewPassword(v) {
    if (v === '') return 'Enter a password.';
    const chars = Array.from(v).length; // code points, as the API counts them
    if (chars < PW_MIN_CHARS)
      return 'The password needs at least ' + PW_MIN_CHARS + ' characters (' + chars + ' so far).';
    if (utf8.encode(v).length > PW_MAX_BYTES)
      return 'The password is too long: at most ' + PW_MAX_BYTES + ' bytes.';
    return '';
  }

  // Sign-in only needs a password that could exist: the API answers any other with the
  // same "wrong email or password" as a wrong one.
  function checkPassword(v) {
    if (v === '') return 'Enter your password.';
    if (utf8.encode(v).length > PW_MAX_BYTES)
      return 'The password is too long: at most ' + PW_MAX_BYTES + ' bytes.';
    return '';
  }

  function setFieldError(input, text) {
    const err = $(input.id + '-error');
    if (err.textContent !== text) err.textContent = text;
    if (text) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
  }

  // A form: its fields and their checks. Checks run 300 ms after the last keystroke in a
  // field, and for every field on submit. Not on blur: a message appearing or going away
  // while the pointer is pressed on the submit button would move the button away from
  // under it, and the click would be lost.
  function setupForm(form, checks, onSubmit) {
    const fields = Object.keys(checks).map((name) => form.elements[name]);
    const check = (input) => {
      const text = checks[input.name](input.value);
      setFieldError(input, text);
      return text;
    };
    const timers = new Map();
    const stopTimers = () => {
      for (const t of timers.values()) clearTimeout(t);
      timers.clear();
    };
    for (const input of fields) {
      input.addEventListener('input', () => {
        clearTimeout(timers.get(input));
        timers.set(input, setTimeout(() => check(input), DEBOUNCE_MS));
      });
    }
    // form.reset() after a success: no check of the emptied fields may follow
    form.addEventListener('reset', () => {
      stopTimers();
      for (const input of fields) setFieldError(input, '');
    });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      stopTimers();
      let first = null;
      for (const input of fields) if (check(input) && !first) first = input;
      if (first) {
        const n = fields.filter((f) => f.getAttribute('aria-invalid')).length;
        fail('Please correct the highlighted field' + (n > 1 ? 's' : '') + '.');
        first.focus();
        return;
      }
      const button = form.querySelector('button[type="submit"]');
      clearMessages();
      button.disabled = true;
      form.setAttribute('aria-busy', 'true');
      try {
        await onSubmit(form, button);
      } finally {
        form.removeAttribute('aria-busy');
        if (!retryTimer) button.disabled = false;
      }
    });
  }

  // ---- sign up, sign in -------------------------------------------------------------------

  async function signup(form, button) {
    const email = form.elements.email.value;
    const { res, body } = await api('POST', '/api/auth/signup', {
      json: { email, password: form.elements.password.value },
    });
    if (!res) return fail(UNREACHABLE);
    if (res.status === 201 && body) {
      form.reset();
      const signinEmail = $('signin-email');
      signinEmail.value = body.email;
      announce('Account created for ' + body.email + '. You can sign in now.');
      $('signin-password').focus();
      return;
    }
    if (res.status === 429) return tooMany(res, button);
    const text = describe(res, body, 'Sign-up');
    if (body && body.error === 'invalid_email') setFieldError(form.elements.email, text);
    if (body && body.error === 'weak_password') setFieldError(form.elements.password, text);
    fail(text);
  }

  async function signin(form, button) {
    const { res, body } = await api('POST', '/api/auth/signin', {
      json: { email: form.elements.email.value, password: form.elements.password.value },
    });
    if (!res) return fail(UNREACHABLE);
    if (res.status === 200 && body && typeof body.token === 'string') {
      form.reset();
      store(body.token);
      await showSession(true);
      return;
    }
    if (res.status === 429) return tooMany(res, button);
    fail(describe(res, body, 'Sign-in'));
    if (res.status === 401) form.elements.password.select();
  }

  // ---- the session ------------------------------------------------------------------------

  // memoryToken: the same token, for when sessionStorage is off (browser settings): the
  // session then lasts this page view only.
  function store(t) {
    memoryToken = t;
    try {
      sessionStorage.setItem(TOKEN_KEY, t);
    } catch (e) {
      /* memory only */
    }
  }

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || memoryToken;
    } catch (e) {
      return memoryToken;
    }
  }

  function forget() {
    memoryToken = '';
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      /* nothing stored */
    }
    if (countdownTimer) clearInterval(countdownTimer);
    countdownTimer = 0;
  }

  function showForms(focusId) {
    el.session.hidden = true;
    el.forms.hidden = false;
    if (focusId) $(focusId).focus();
  }

  function left(ms) {
    if (ms <= 0) return 'expired';
    let s = Math.floor(ms / 1000);
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    const parts = [];
    if (d) parts.push(d + ' d');
    if (d || h) parts.push(h + ' h');
    if (d || h || m) parts.push(m + ' min');
    parts.push(s + ' s');
    return 'in ' + parts.join(' ');
  }

  // Asks the API who the token is (GET /api/auth/validate) and shows it.
  async function showSession(fresh) {
    const t = token();
    if (!t) return showForms();
    const { res, body } = await api('GET', '/api/auth/validate', { token: t });
    if (!res) {
      fail(UNREACHABLE);
      return showForms();
    }
    if (res.status !== 200 || !body) {
      forget();
      showForms();
      if (res.status === 401) {
        if (!fresh) announce('Your previous session has ended. Please sign in again.');
        else fail(describe(res, body, 'Checking the session'));
      } else {
        fail(describe(res, body, 'Checking the session'));
      }
      return;
    }
    el.sessionEmail.textContent = body.email;
    el.sessionUser.textContent = body.userId;
    const expires = Date.parse(body.expiresAt);
    el.sessionExpires.dateTime = body.expiresAt;
    el.sessionExpires.textContent = new Date(expires).toLocaleString();
    const tick = () => {
      const ms = expires - Date.now();
      el.sessionCountdown.textContent = left(ms);
      if (ms <= 0) {
        forget();
        showForms('signin-email');
        fail('Your session has expired. Please sign in again.');
      }
    };
    tick();
    if (countdownTimer) clearInterval(countdownTimer);
    countdownTimer = setInterval(tick, 1000);
    el.forms.hidden = true;
    el.session.hidden = false;
    if (fresh) announce('Signed in as ' + body.email + '.');
    el.sessionTitle.focus();
  }

  async function signout(all) {
    const button = all ? el.signoutAll : el.signout;
    const t = token();
    clearMessages();
    button.disabled = true;
    const { res, body } = await api('POST', all ? '/api/auth/signout-all' : '/api/auth/signout', {
      token: t,
    });
    button.disabled = false;
    if (!res) return fail(UNREACHABLE);
    if (res.status === 204 || res.status === 401) {
      // 401: the session had already ended; either way this tab is signed out.
      forget();
      showForms('signin-email');
      if (res.status === 204)
        announce(all ? 'Signed out everywhere: every session of this account has ended.' : 'Signed out.');
      else announce('Your session had already ended. You are signed out.');
      return;
    }
    if (res.status === 429) return tooMany(res, button);
    fail(describe(res, body, 'Sign-out'));
  }

  // ---- start ------------------------------------------------------------------------------

  setupForm($('signup'), { email: checkEmail, password: checkNewPassword }, signup);
  setupForm($('signin'), { email: checkEmail, password: checkPassword }, signin);
  el.signout.addEventListener('click', () => signout(false));
  el.signoutAll.addEventListener('click', () => signout(true));
  if (token()) showSession(false);
})();
