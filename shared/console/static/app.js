// The /ui/ page: a client of the admin listener's JSON API (design.md,
// "Round three"). Every scene, label, group and reply is put into the page
// as text (textContent, attributes), never as markup. The strings are the
// language's table, which the server puts into the page.
'use strict';
(() => {
  const T = JSON.parse(document.getElementById('strings').textContent);
  const LANG = document.documentElement.lang;
  // t fills {name} from v; a {name} v does not have stays (a rule's
  // {scene} is text to show).
  const t = (k, v = {}) => (T[k] ?? k).replace(/\{(\w+)\}/g, (m, n) => (n in v ? String(v[n]) : m));
  const $ = (sel) => document.querySelector(sel);

  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    el.append(...kids.flat(9).filter((k) => k != null && k !== false).map((k) => (k instanceof Node ? k : String(k))));
    for (const [k, v] of Object.entries(props || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'value') el.value = v;
      else el.setAttribute(k === 'cls' ? 'class' : k, v === true ? '' : v);
    }
    return el;
  }
  function svg(tag, attrs, ...kids) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    el.append(...kids);
    return el;
  }

  // The state worth a reload or a link is in the address.
  const Q = new URLSearchParams(location.search);
  const S = {
    account: Q.get('account') || 'default',
    period: Q.get('period') || '7d',
    from: Q.get('from') || '',
    to: Q.get('to') || '',
    view: Q.get('view') || 'scenes',
    q: Q.get('q') || '',
    sort: Q.get('sort') || 'scans',
    order: Q.get('order') === 'asc' ? 'asc' : 'desc',
    page: Math.max(0, parseInt(Q.get('page'), 10) || 0),
    group: Q.has('group') ? Q.get('group') : null, // the scenes of one group
    focus: null, // {kind: 'scene' | 'group', id}
  };
  function saveState() {
    const p = new URLSearchParams();
    const defaults = { account: 'default', period: '7d', from: '', to: '', view: 'scenes', group: null, q: '', sort: 'scans', order: 'desc', page: 0 };
    for (const [k, def] of Object.entries(defaults)) {
      if (S[k] !== def && S[k] != null && !(S.period !== 'custom' && (k === 'from' || k === 'to'))) p.set(k, S[k]);
    }
    const other = new URLSearchParams(p);
    if (LANG === 'en') p.set('lang', 'en');
    else other.set('lang', 'en');
    history.replaceState(null, '', '?' + p);
    $('#lang').href = '/ui/?' + other;
  }

  // url is an API path with the account and params; api fetches it.
  function url(path, params = {}) {
    const u = new URL(path, location.href);
    if (S.account !== 'default' && path !== '/api/accounts') u.searchParams.set('account', S.account);
    for (const [k, v] of Object.entries(params)) if (v != null && v !== '') u.searchParams.set(k, v);
    return u.pathname + u.search;
  }
  async function api(path, params, init) {
    const r = await fetch(url(path, params), init);
    const body = (r.headers.get('Content-Type') || '').includes('json') ? await r.json().catch(() => null) : null;
    if (!r.ok) throw Object.assign(new Error((body && body.error) || r.status + ' ' + r.statusText), { status: r.status, body });
    return body;
  }
  const send = (method, path, body, type = 'application/json', headers = {}) =>
    api(path, {}, { method, headers: { 'Content-Type': type, ...headers }, body: type === 'application/json' ? JSON.stringify(body) : body });

  // problem says what went wrong in the reader's words: WeChat's refusals
  // by their errcode (the errcode after), the rest as the API said it.
  function problem(e) {
    const b = e.body || {};
    if (b.errcode) return (T['wx_' + b.errcode] ? t('wx_' + b.errcode) : t('wx_other', { msg: b.errmsg || '' })) + t('errcode', { code: b.errcode });
    if (e.status === 401) return t('signed_out');
    if (e.status === 502) return t('wx_silent');
    if (e.status === 400 && b.field) return t('rule_bad', { n: b.index == null ? '' : b.index + 1, field: b.field, error: b.error });
    if (!e.status) return t('offline');
    return b.error || e.message;
  }
  const errorBox = (e) => h('p', { cls: 'error', role: 'alert' }, problem(e));

  // Dates are days in the analytics' zone (the API's time_zone).
  let TZ = 'Asia/Shanghai';
  function today() {
    const p = {};
    for (const x of new Intl.DateTimeFormat('en', { timeZone: TZ, year: 'numeric', month: '2-digit', day: '2-digit' }).formatToParts(new Date())) p[x.type] = x.value;
    return `${p.year}-${p.month}-${p.day}`;
  }
  function addDays(day, n) {
    const d = new Date(day + 'T00:00:00Z');
    d.setUTCDate(d.getUTCDate() + n);
    return d.toISOString().slice(0, 10);
  }
  const days = (from, to) => Math.round((Date.parse(to) - Date.parse(from)) / 864e5) + 1;
  const isDay = (s) => /^\d{4}-\d{2}-\d{2}$/.test(s) && !isNaN(Date.parse(s));
  function period() {
    const d = today();
    switch (S.period) {
      case 'today': return [d, d];
      case 'yesterday': return [addDays(d, -1), addDays(d, -1)];
      case '30d': return [addDays(d, -29), d];
      case 'custom': if (isDay(S.from) && isDay(S.to) && S.from <= S.to && days(S.from, S.to) <= 731) return [S.from, S.to];
    }
    return [addDays(d, -6), d];
  }
  const zone = () => (TZ === 'Asia/Shanghai' ? t('zone_beijing') : TZ);
  const when = (iso) => new Intl.DateTimeFormat(LANG, { timeZone: TZ, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' }).format(new Date(iso));
  const num = (n) => (n ?? 0).toLocaleString(LANG);

  const COLS = ['scans', 'new_followers', 'unique_people', 'unfollows', 'net_followers'];
  const PAGE = 20;

  // ---- channels: the period, the trend, the ranking -------------------

  function periodBar() {
    const [from, to] = period();
    const n = days(from, to);
    const pick = (p) => () => {
      if (p === 'custom' && S.period !== 'custom') [S.from, S.to] = period();
      S.period = p;
      S.page = 0;
      refresh();
    };
    const date = (k) => h('input', { type: 'date', value: k === 'from' ? from : to, max: today(), 'aria-label': t('period_' + k),
      onchange: (e) => { if (isDay(e.target.value)) { S[k] = e.target.value; S.page = 0; refresh(); } } });
    return h('div', { cls: 'periods', id: 'periods' },
      h('div', { cls: 'seg', role: 'group', 'aria-label': t('period') },
        ['today', 'yesterday', '7d', '30d', 'custom'].map((p) =>
          h('button', { type: 'button', 'aria-pressed': String(S.period === p), dataset: { period: p }, onclick: pick(p) }, t('period_' + p)))),
      S.period === 'custom' ? h('span', { cls: 'custom' }, date('from'), '–', date('to')) : null,
      S.period === 'custom' && (S.from > S.to || days(S.from, S.to) > 731) ? h('p', { cls: 'error' }, t('period_bad')) : null,
      h('p', { cls: 'hint' }, t('period_range', { from, to, zone: zone() }), ' · ',
        t('compare_with', { from: addDays(from, -n), to: addDays(from, -1) })));
  }

  function delta(col, cur, prev) {
    if (prev == null) return null;
    const d = cur - prev;
    if (d === 0) return h('small', { cls: 'delta', title: t('previous', { n: num(prev) }) }, t('same'));
    const good = col === 'unfollows' ? d < 0 : d > 0;
    const pct = prev > 0 ? ` ${d > 0 ? '+' : '−'}${Math.round((Math.abs(d) * 100) / prev)}%` : '';
    return h('small', { cls: 'delta ' + (good ? 'good' : 'bad'), title: t('previous', { n: num(prev) }) }, (d > 0 ? '↑' : '↓') + num(Math.abs(d)) + pct);
  }

  function tiles(cur, prev) {
    return h('div', { cls: 'tiles' }, ['scans', 'new_followers', 'unfollows', 'net_followers'].map((c) =>
      h('div', { cls: 'tile', dataset: { col: c } }, h('span', {}, t('col_' + c)), h('strong', {}, num(cur[c])), prev ? delta(c, cur[c], prev[c]) : null)));
  }
  const sum = (pts) => {
    const out = { scans: 0, new_followers: 0, unfollows: 0, net_followers: 0 };
    for (const p of pts) for (const k in out) out[k] += p[k] || 0;
    return out;
  };

  // groupSeries is a group's days, one /api/groups a day: the API has no
  // series per group.
  async function groupSeries(group, from, to) {
    const list = [];
    for (let d = from; d <= to; d = addDays(d, 1)) list.push(d);
    const out = [];
    for (let i = 0; i < list.length; i += 6) {
      out.push(...await Promise.all(list.slice(i, i + 6).map(async (d) => {
        const g = (await api('/api/groups', { from: d, to: d })).groups.find((x) => x.group === group) || {};
        return { ...g, start: d };
      })));
    }
    return out;
  }

  async function loadTrend() {
    const box = $('#trend');
    const [from, to] = period();
    const n = days(from, to);
    const f = S.focus;
    const step = n === 1 && f?.kind !== 'group' ? 'hour' : 'day';
    const path = f?.kind === 'scene' ? '/api/scenes/' + encodeURIComponent(f.id).replace(/\./g, '%2E') + '/series' : '/api/series';
    const title = f ? t(f.kind === 'scene' ? 'trend_scene' : 'trend_group', { name: f.label || f.id || t('no_group') }) : t('trend_all');
    const head = h('div', { cls: 'head' }, h('h3', {}, title),
      f ? h('button', { type: 'button', cls: 'link', onclick: () => { S.focus = null; loadTrend(); markFocus(); } }, t('trend_back')) : null,
      f?.kind !== 'group' ? h('a', { href: url(path, { from, to, step, format: 'csv' }), download: `${title}_${from}_${to}.csv` }, t('csv_trend')) : null);
    try {
      let pts;
      if (f?.kind === 'group') {
        if (2 * n > 62) {
          box.replaceChildren(head, h('p', { cls: 'hint' }, t('group_trend_long')));
          return;
        }
        pts = await groupSeries(f.id, addDays(from, -n), to);
      } else {
        const body = await api(path, { from: addDays(from, -n), to, step });
        if (body.time_zone && body.time_zone !== TZ) {
          TZ = body.time_zone; // the periods were days of another zone
          return refresh();
        }
        pts = body.points;
      }
      const cur = pts.filter((p) => p.start.slice(0, 10) >= from);
      box.replaceChildren(head, tiles(sum(cur), sum(pts.filter((p) => p.start.slice(0, 10) < from))), chart(cur, step));
    } catch (e) {
      box.replaceChildren(head, errorBox(e));
    }
  }

  // chart draws the points: scans as bars, new followers and unfollows as
  // lines, as wide as its box.
  function chart(pts, step) {
    const W = Math.max(280, Math.min(1040, $('#trend').clientWidth || 600)), H = 190, L = 36, B = 22, top = 8;
    const most = Math.max(1, ...pts.map((p) => Math.max(p.scans, p.new_followers, p.unfollows)));
    const mag = 10 ** Math.floor(Math.log10(most));
    const ceil = [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= most);
    const y = (v) => top + (H - top - B) * (1 - v / ceil);
    const bw = (W - L - 4) / Math.max(1, pts.length);
    const x = (i) => L + i * bw + bw / 2;
    const label = (p) => (step === 'hour' ? p.start.slice(11, 13) + ':00' : p.start.slice(5, 10));
    const every = Math.ceil(pts.length / Math.max(1, Math.floor((W - L) / 48)));
    const line = (k, cls) => svg('polyline', { class: cls, points: pts.map((p, i) => `${x(i)},${y(p[k])}`).join(' '), fill: 'none' });
    const el = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img',
      'aria-label': t('chart_label', { scans: num(sum(pts).scans), follows: num(sum(pts).new_followers), unfollows: num(sum(pts).unfollows) }) },
    ...[0, ceil / 2, ceil].flatMap((v) => [svg('line', { x1: L, x2: W, y1: y(v), y2: y(v), class: 'grid' }),
      svg('text', { x: L - 4, y: y(v) + 4, 'text-anchor': 'end' }, num(v))]),
    ...pts.map((p, i) => svg('rect', { class: 'bar', x: x(i) - bw * 0.35, width: Math.max(1, bw * 0.7), y: y(p.scans), height: y(0) - y(p.scans) },
      svg('title', {}, t('chart_point', { when: label(p), scans: num(p.scans), follows: num(p.new_followers), unfollows: num(p.unfollows) })))),
    ...pts.map((p, i) => (i % every ? null : svg('text', { x: x(i), y: H - 6, 'text-anchor': 'middle' }, label(p)))).filter(Boolean));
    el.append(line('new_followers', 'follows'), line('unfollows', 'unfollows'));
    const key = (cls, k) => h('span', { cls: 'key ' + cls }, t('col_' + k));
    return h('figure', { cls: 'chart' }, el, h('figcaption', {}, key('bar', 'scans'), key('follows', 'new_followers'), key('unfollows', 'unfollows')));
  }

  function focus(kind, id, label) {
    S.focus = { kind, id, label };
    markFocus();
    loadTrend();
    $('#trend').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  }
  function markFocus() {
    document.querySelectorAll('table.rank tbody tr').forEach((tr) =>
      tr.classList.toggle('on', !!S.focus && tr.dataset.kind === S.focus.kind && tr.dataset.id === S.focus.id));
  }

  function sortBy(col) {
    S.order = S.sort === col && S.order === 'desc' ? 'asc' : 'desc';
    S.sort = col;
    S.page = 0;
    saveState();
    loadRank();
  }

  function rankTable(rows, kind) {
    const sortable = (c, label) => h('th', { scope: 'col', cls: c === 'scene' || c === 'group' ? null : 'num', 'aria-sort': S.sort === c ? (S.order === 'desc' ? 'descending' : 'ascending') : null },
      h('button', { type: 'button', onclick: () => sortBy(c) }, label, S.sort === c ? (S.order === 'desc' ? ' ↓' : ' ↑') : ''));
    return h('table', { cls: 'rank' },
      h('thead', {}, h('tr', {}, sortable(kind === 'group' ? 'group' : 'scene', t(kind === 'group' ? 'col_group' : 'col_channel')), COLS.map((c) => sortable(c, t('col_' + c))))),
      h('tbody', {}, rows.map((r) => {
        const id = r[kind];
        const name = kind === 'group' ? id || t('no_group') : r.label || id;
        return h('tr', { dataset: { kind, id } },
          h('th', { scope: 'row', cls: 'name' },
            h('button', { type: 'button', cls: 'link', title: t('show_trend'), onclick: () => focus(kind, id, name) }, name),
            kind === 'scene' && (r.label || r.group) ? h('small', {}, r.label ? t('scene_is', { scene: id }) : null, r.group ? h('span', { cls: 'chip' }, r.group) : null) : null,
            kind === 'group' ? h('small', {}, h('button', { type: 'button', cls: 'link', onclick: () => { S.view = 'scenes'; S.group = id; S.page = 0; refresh(); } }, t('group_scenes'))) : null),
          COLS.map((c) => h('td', { cls: 'num', dataset: { label: t('col_' + c), col: c } }, h('span', {}, num(r[c])), delta(c, r[c] ?? 0, r.previous?.[c]))));
      })));
  }

  // pager pages through total rows; open: total is only known to be more
  // than this page.
  function pager(total, page, go, open) {
    if (total <= PAGE && !page) return null;
    const last = Math.ceil(total / PAGE) - 1;
    const range = { a: num(page * PAGE + 1), b: num(Math.min(total, (page + 1) * PAGE)), n: num(total) };
    return h('nav', { cls: 'pager', 'aria-label': t('pages') },
      h('button', { type: 'button', disabled: page <= 0, onclick: () => go(page - 1) }, t('prev')),
      h('span', {}, t(open ? 'page_open' : 'page_of', range)),
      h('button', { type: 'button', disabled: page >= last, onclick: () => go(page + 1) }, t('next')));
  }

  let rankSeq = 0;
  async function loadRank() {
    const seq = ++rankSeq;
    const box = $('#rank');
    const [from, to] = period();
    const link = $('#csv');
    box.setAttribute('aria-busy', 'true');
    try {
      let out;
      if (S.view === 'groups') {
        const body = await api('/api/groups', { from, to, compare: 'previous' });
        link.href = url('/api/groups', { from, to, compare: 'previous', format: 'csv' });
        link.download = `${t('view_groups')}_${from}_${to}.csv`;
        const q = S.q.toLowerCase();
        const key = COLS.includes(S.sort) ? S.sort : null;
        const rows = body.groups.filter((g) => !q || (g.group || t('no_group')).toLowerCase().includes(q))
          .sort((a, b) => (S.order === 'desc' ? -1 : 1) * (key ? (a[key] ?? 0) - (b[key] ?? 0) : a.group.localeCompare(b.group, LANG)));
        out = rows.length ? [rankTable(rows, 'group')] : [h('p', { cls: 'hint' }, t('no_match'))];
      } else {
        // The idle view is the scenes by scans, fewest first, while
        // they have none: the API lists every code's scene, scanned or not.
        const idle = S.view === 'idle';
        const p = { from, to, compare: 'previous', sort: idle ? 'scans' : S.sort, order: idle ? 'asc' : S.order, q: S.q, group: S.group };
        const body = await api('/api/scenes', { ...p, limit: PAGE + (idle ? 1 : 0), offset: S.page * PAGE });
        link.href = url('/api/scenes', { ...p, format: 'csv' });
        link.download = `${t('view_' + S.view)}_${from}_${to}.csv`;
        let rows = body.scenes;
        let total = body.total;
        if (idle) {
          rows = rows.filter((r) => !r.scans);
          total = S.page * PAGE + rows.length;
          rows = rows.slice(0, PAGE);
        }
        const go = (n) => { S.page = n; saveState(); loadRank(); };
        out = [S.group != null ? h('p', {}, h('span', { cls: 'chip' }, t('group_is', { group: S.group || t('no_group') }), ' ',
          h('button', { type: 'button', cls: 'link', 'aria-label': t('all_groups'), onclick: () => { S.group = null; S.page = 0; refresh(); } }, '✕'))) : null,
        rows.length ? [rankTable(rows, 'scene'), pager(total, S.page, go, idle)]
          : h('p', { cls: 'hint' }, idle ? t('idle_none') : S.q || S.group != null ? t('no_match') : t('no_scans'))];
      }
      if (seq === rankSeq) box.replaceChildren(...out.flat().filter(Boolean));
    } catch (e) {
      if (seq === rankSeq) box.replaceChildren(errorBox(e));
    }
    box.removeAttribute('aria-busy');
    markFocus();
  }

  let asOf;
  function refresh() {
    saveState();
    $('#periods').replaceWith(periodBar());
    document.querySelectorAll('#views button').forEach((b) => b.setAttribute('aria-selected', String(b.dataset.view === S.view)));
    $('#search').value = S.q;
    asOf.textContent = t('as_of', { time: when(new Date().toISOString()).slice(-5), zone: zone() });
    return Promise.all([loadTrend(), loadRank()]);
  }

  function channels() {
    let typing;
    asOf = h('span', { cls: 'hint' });
    return h('section', { cls: 'card', id: 'channels' },
      h('div', { cls: 'head' }, h('h2', {}, t('channels')), asOf, h('button', { type: 'button', cls: 'link', onclick: () => { refresh(); showCodes(true); } }, t('reload'))),
      h('div', { id: 'periods' }),
      h('div', { id: 'trend' }),
      h('div', { cls: 'tabs', id: 'views', role: 'tablist' }, ['scenes', 'groups', 'idle'].map((v) =>
        h('button', { type: 'button', role: 'tab', dataset: { view: v }, onclick: () => { S.view = v; S.page = 0; refresh(); } }, t('view_' + v)))),
      h('div', { cls: 'tools' },
        h('input', { type: 'search', id: 'search', placeholder: t('search'), 'aria-label': t('search'),
          oninput: (e) => { clearTimeout(typing); typing = setTimeout(() => { S.q = e.target.value.trim(); S.page = 0; saveState(); loadRank(); }, 300); } }),
        h('a', { id: 'csv', href: '#', download: '' }, t('csv_table'))),
      h('div', { id: 'rank' }),
      h('p', { cls: 'hint' }, t('scans_note')));
  }

  // ---- codes -----------------------------------------------------------

  let CODES; // the account's codes; null: codes are off for it
  async function loadCodes(again) {
    if (CODES !== undefined && !again) return CODES;
    try {
      CODES = (await api('/api/qrcodes')).qrcodes;
    } catch (e) {
      if (e.status !== 503) throw e;
      CODES = null;
    }
    return CODES;
  }

  const chars = (s) => [...s].length;
  function checkCode(c) {
    if (chars(c.scene) < 1 || chars(c.scene) > 64) return t('bad_scene');
    if (chars(c.label) > 200) return t('bad_label');
    if (chars(c.group) > 32) return t('bad_group');
    return '';
  }

  function createForm() {
    const out = h('div', { role: 'status' });
    const warn = h('p', { cls: 'alert', hidden: true }, t('temp_warning'));
    const life = h('select', { name: 'expire_seconds', disabled: true, 'aria-label': t('f_valid') },
      [[1, 86400], [7, 604800], [30, 2592000]].map(([d, s]) => h('option', { value: s, selected: d === 30 }, t('valid_' + d))));
    const kind = (v, checked) => h('label', { cls: 'radio' }, h('input', { type: 'radio', name: 'kind', value: v, checked,
      onchange: () => { const temp = v === 'temporary'; warn.hidden = !temp; life.disabled = !temp; } }), t('kind_' + v));
    const form = h('form', { cls: 'create', onsubmit: async (e) => {
      e.preventDefault();
      const f = new FormData(form);
      const label = f.get('label').trim();
      const c = { scene: f.get('scene').trim() || label, label, group: f.get('group').trim(), permanent: f.get('kind') === 'permanent' };
      if (!c.permanent) c.expire_seconds = +f.get('expire_seconds');
      const bad = checkCode(c);
      if (bad) return out.replaceChildren(h('p', { cls: 'error', role: 'alert' }, bad));
      const button = form.querySelector('button');
      button.disabled = true;
      out.replaceChildren(h('p', { cls: 'hint' }, t('creating')));
      try {
        const made = await send('POST', '/api/qrcodes', c);
        out.replaceChildren(h('p', { cls: 'notice' }, t('created', { name: made.label || made.scene })));
        form.reset();
        warn.hidden = true;
        life.disabled = true;
        await showCodes(true);
      } catch (err) {
        out.replaceChildren(errorBox(err));
      } finally {
        button.disabled = false;
      }
    } },
    h('label', {}, t('f_label'), h('input', { name: 'label', placeholder: t('f_label_ph') })),
    h('label', {}, t('f_scene'), h('input', { name: 'scene', placeholder: t('f_scene_ph') })),
    h('label', {}, t('f_group'), h('input', { name: 'group', list: 'groups', placeholder: t('f_group_ph') })),
    h('fieldset', {}, h('legend', {}, t('f_kind')), kind('permanent', true), kind('temporary', false), life),
    h('button', {}, t('f_create')));
    return h('div', {}, h('h3', {}, t('new_code')), form, warn, h('p', { cls: 'hint' }, t('f_scene_hint')), out);
  }

  // text reads a file a spreadsheet saved: UTF-8, else GB 18030 (what
  // Excel writes for "CSV" on a Chinese Windows).
  async function text(file) {
    const b = await file.arrayBuffer();
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(b);
    } catch {
      return new TextDecoder('gb18030').decode(b);
    }
  }

  function batchForm() {
    const out = h('div', { role: 'status' });
    const file = h('input', { type: 'file', name: 'csv', accept: '.csv,text/csv', required: true });
    const form = h('form', { cls: 'batch', onsubmit: async (e) => {
      e.preventDefault();
      const button = form.querySelector('button');
      button.disabled = true;
      out.replaceChildren(h('p', { cls: 'hint' }, t('creating')));
      try {
        const rows = await text(file.files[0]);
        const { results } = await send('POST', '/api/qrcodes/batch', rows, 'text/csv');
        const ok = results.filter((r) => r.status < 300).length;
        out.replaceChildren(h('p', { cls: ok === results.length ? 'notice' : 'error' }, t('batch_done', { ok, bad: results.length - ok })),
          h('table', { cls: 'results' }, h('thead', {}, h('tr', {}, h('th', {}, t('row')), h('th', {}, t('f_scene')), h('th', {}, t('result')))),
            h('tbody', {}, results.map((r, i) => h('tr', { cls: r.status < 300 ? 'ok' : 'failed' }, h('td', {}, i + 2), h('td', {}, r.scene),
              h('td', {}, r.status === 201 ? t('row_made') : r.status === 200 ? t('row_existed') : r.error || r.status))))));
        form.reset();
        await showCodes(true);
      } catch (err) {
        out.replaceChildren(errorBox(err));
      } finally {
        button.disabled = false;
      }
    } }, h('label', {}, t('batch_file'), file), h('button', {}, t('batch_go')));
    return h('div', {}, h('h3', {}, t('batch')), h('p', { cls: 'hint' }, t('batch_hint')), h('pre', { cls: 'sample' }, t('batch_sample')), form, out);
  }

  const CF = { q: '', group: '', status: '', caption: true, page: 0 };
  const CARDS = 24;

  function kindText(c) {
    if (c.permanent) return h('p', { cls: 'kind' }, t('kind_permanent'));
    if (c.expired) return h('p', { cls: 'kind warn' }, t('expired_at', { time: when(c.expires_at), zone: zone() }));
    const hours = Math.max(1, Math.ceil((Date.parse(c.expires_at) - Date.now()) / 36e5));
    return h('p', { cls: 'kind' + (c.expiring_soon ? ' warn' : '') }, t('until', { time: when(c.expires_at), zone: zone() }),
      c.expiring_soon ? h('strong', {}, ' ', hours <= 24 ? t('expiring_hours', { n: hours }) : t('expiring', { n: Math.ceil(hours / 24) })) : null);
  }

  function downloads(c) {
    const link = (params, label, title) => h('a', { href: url(c.image_url, { ...params, caption: CF.caption ? 1 : null }), download: '', title }, label);
    return h('p', { cls: 'downloads' }, h('span', {}, t('download')),
      [[1024, 8.7], [2048, 17], [4096, 35]].map(([px, cm]) => link({ format: 'png', size: px }, t('png_cm', { cm }), t('png_title', { px, cm }))),
      link({ format: 'svg' }, t('svg'), t('svg_title')));
  }

  function card(c) {
    return h('li', { cls: 'code' + (c.expired ? ' expired' : c.expiring_soon ? ' soon' : ''), dataset: { scene: c.scene } },
      h('img', { src: url(c.image_url, { size: 240, expired: c.expired ? 1 : null }), width: 120, height: 120, alt: t('qr_alt', { name: c.label || c.scene }) }),
      h('div', { cls: 'info' },
        h('h4', {}, c.label || c.scene),
        c.label ? h('p', { cls: 'scene' }, t('scene_is', { scene: c.scene })) : null,
        c.group ? h('span', { cls: 'chip' }, c.group) : null,
        kindText(c),
        h('p', { cls: 'counts' }, t('card_counts', { scans: num(c.scans), follows: num(c.new_followers) })),
        c.expired ? h('p', { cls: 'hint' }, t('expired_no_download')) : downloads(c),
        RULES ? replyEditor(c.scene) : null));
  }

  async function showCodes(again) {
    const box = $('#codelist');
    let codes;
    try {
      codes = await loadCodes(again);
    } catch (e) {
      return box.replaceChildren(errorBox(e));
    }
    if (!codes) {
      $('#codes-make').replaceChildren();
      return box.replaceChildren(h('p', { cls: 'hint' }, t('codes_off')));
    }
    const groups = [...new Set(codes.map((c) => c.group))].sort((a, b) => a.localeCompare(b, LANG));
    $('#groups').replaceChildren(...groups.filter(Boolean).map((g) => h('option', { value: g })));
    const set = (k) => (e) => { CF[k] = e.target.type === 'checkbox' ? e.target.checked : e.target.value; CF.page = 0; drawCards(); };
    box.replaceChildren(h('div', { cls: 'tools' },
      h('input', { type: 'search', value: CF.q, placeholder: t('search'), 'aria-label': t('search'), oninput: set('q') }),
      h('select', { 'aria-label': t('f_group'), onchange: set('group') },
        h('option', { value: '' }, t('all_groups')), groups.map((g) => h('option', { value: '=' + g, selected: CF.group === '=' + g }, g || t('no_group')))),
      h('select', { 'aria-label': t('status'), onchange: set('status') },
        ['', 'active', 'soon', 'expired'].map((s) => h('option', { value: s, selected: CF.status === s }, t('status_' + (s || 'all'))))),
      h('label', { cls: 'check' }, h('input', { type: 'checkbox', checked: CF.caption, onchange: set('caption') }), t('caption')),
      h('a', { id: 'zip', download: '' })), h('div', { id: 'cards' }));
    drawCards();
  }

  // drawCards shows the page of codes the filters leave (CF.group is '' for
  // every group, else '=' and the group).
  function drawCards() {
    const q = CF.q.toLowerCase();
    const group = CF.group ? CF.group.slice(1) : null;
    const list = CODES.filter((c) => (!q || (c.scene + ' ' + c.label).toLowerCase().includes(q)) && (group == null || c.group === group) &&
      (!CF.status || (CF.status === 'expired' ? c.expired : CF.status === 'soon' ? c.expiring_soon : !c.expired)));
    const zip = $('#zip');
    zip.href = url('/api/qrcodes/archive.zip', { group });
    zip.textContent = group == null ? t('zip_all') : t('zip_group', { group: group || t('no_group') });
    const page = Math.max(0, Math.min(CF.page, Math.ceil(list.length / CARDS) - 1));
    const go = (n) => { CF.page = n; drawCards(); };
    $('#cards').replaceChildren(...[h('p', { cls: 'hint' }, t('codes_count', { n: num(list.length) })),
      h('ul', { cls: 'codes' }, list.slice(page * CARDS, (page + 1) * CARDS).map(card)),
      list.length > CARDS && h('nav', { cls: 'pager' },
        h('button', { type: 'button', disabled: page <= 0, onclick: () => go(page - 1) }, t('prev')),
        h('span', {}, t('page_n', { n: page + 1, of: Math.ceil(list.length / CARDS) })),
        h('button', { type: 'button', disabled: (page + 1) * CARDS >= list.length, onclick: () => go(page + 1) }, t('next')))].filter(Boolean));
  }

  function codes() {
    return h('section', { cls: 'card', id: 'codes' },
      h('h2', {}, t('codes')),
      h('datalist', { id: 'groups' }),
      h('div', { cls: 'make', id: 'codes-make' }, createForm(), batchForm()),
      h('div', { id: 'codelist' }, h('p', { cls: 'hint' }, t('loading'))));
  }

  // ---- rules: a reply per code, keyword replies, a test box --------------

  let RULES; // {revision, rules}; null: the rules are not served here
  async function loadRules() {
    try {
      const b = await api('/api/rules');
      RULES = { revision: b.revision, rules: b.rules };
    } catch (e) {
      RULES = null;
      if (e.status !== 404 && e.status !== 405) throw e;
    }
  }

  // The rules the page edits: a code's (when is exactly its scene) and
  // keyword rules; it keeps every other rule where it is.
  const sceneRule = (r, scene) => r.when.scene === scene && Object.keys(r.when).length === 1;
  const keywordRule = (r) => typeof r.when.keyword === 'string' && r.when.keyword !== '' && r.when.scene == null && r.when.scene_prefix == null;
  const clip = (s, n) => [...s].slice(0, n).join('');

  // toast says something that outlives the part of the page it is about.
  function toast(msg, cls = 'notice') {
    const el = h('p', { id: 'toast', cls, role: cls === 'error' ? 'alert' : 'status' }, msg);
    $('#toast')?.remove();
    document.body.append(el);
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => el.remove(), 10000);
  }

  // putRules stores rules if nobody changed them since they were read; if
  // somebody did, it shows theirs, says so, and returns false.
  async function putRules(rules) {
    try {
      const b = await send('PUT', '/api/rules', { rules }, 'application/json', { 'If-Match': String(RULES.revision) });
      RULES = { revision: b.revision, rules: b.rules };
      return true;
    } catch (e) {
      if (e.status !== 412) throw e;
      await loadRules();
      showRules();
      showCodes();
      toast(t('rules_conflict'), 'error');
      return false;
    }
  }

  function replyEditor(scene) {
    const rule = RULES.rules.find((r) => sceneRule(r, scene));
    const msg = h('span', { role: 'status' });
    if (rule && rule.reply.type !== 'text') return h('p', { cls: 'hint' }, t('reply_other', { name: rule.name }));
    const box = h('textarea', { rows: 3, value: rule ? rule.reply.content : '', placeholder: t('reply_default'), 'aria-label': t('reply') });
    return h('details', { cls: 'reply', open: !!rule },
      h('summary', {}, t(rule ? 'reply_custom' : 'reply')),
      box, h('p', { cls: 'hint' }, t('reply_hint')),
      h('button', { type: 'button', onclick: async (e) => {
        e.target.disabled = true;
        const content = box.value.trim();
        const i = RULES.rules.findIndex((r) => sceneRule(r, scene));
        const rules = RULES.rules.filter((r) => !sceneRule(r, scene));
        if (content) rules.splice(Math.max(0, i), 0, { name: clip(t('rule_scene', { scene }), 64), when: { scene }, reply: { type: 'text', content } });
        try {
          if (await putRules(rules)) msg.replaceChildren(h('span', { cls: 'saved' }, t('saved')));
        } catch (err) {
          msg.replaceChildren(errorBox(err));
        } finally {
          e.target.disabled = false;
        }
      } }, t('save')), msg);
  }

  let draft = [];
  // merged is the stored rules with the keyword rules replaced by the
  // draft, where the first one was (else after the codes' rules, ahead of
  // the default replies).
  function merged() {
    const rules = RULES.rules;
    const first = rules.findIndex(keywordRule);
    const rest = rules.filter((r) => !keywordRule(r));
    let at = first >= 0 ? rules.slice(0, first).filter((r) => !keywordRule(r)).length : rest.findIndex((r) => !(r.when.scene != null && Object.keys(r.when).length === 1));
    if (at < 0) at = rest.length;
    rest.splice(at, 0, ...draft.map((r) => ({ ...r, name: r.name || clip(t('rule_keyword', { keyword: r.when.keyword }), 64) })));
    return rest;
  }

  function showRules() {
    const box = $('#rules');
    if (!box) return;
    if (!RULES) return box.remove();
    draft = RULES.rules.filter(keywordRule).map((r) => structuredClone(r));
    const list = h('div', { cls: 'keywords' });
    const msg = h('div', { role: 'status' });
    const row = (r) => {
      const text = r.reply.type === 'text';
      return h('div', { cls: 'keyword' },
        h('label', {}, t('keyword'), h('input', { value: r.when.keyword, required: true, oninput: (e) => { r.when.keyword = e.target.value; } })),
        h('label', {}, t('match'), h('select', { onchange: (e) => { r.when.match = e.target.value; } },
          ['contains', 'exact', 'regex'].map((m) => h('option', { value: m, selected: (r.when.match || 'exact') === m }, t('match_' + m))))),
        text ? h('label', { cls: 'wide' }, t('keyword_reply'), h('textarea', { rows: 2, value: r.reply.content, oninput: (e) => { r.reply.content = e.target.value; } }))
          : h('p', { cls: 'hint wide' }, t('reply_kind_' + r.reply.type)),
        h('button', { type: 'button', cls: 'link', onclick: () => { draft.splice(draft.indexOf(r), 1); draw(); } }, t('remove')));
    };
    const draw = () => list.replaceChildren(...(draft.length ? draft.map(row) : [h('p', { cls: 'hint' }, t('no_keywords'))]));
    draw();
    const save = h('button', { type: 'button', onclick: async () => {
      save.disabled = true;
      try {
        if (await putRules(merged())) {
          showRules();
          toast(t('saved'));
        }
      } catch (e) {
        msg.replaceChildren(errorBox(e));
      } finally {
        save.disabled = false;
      }
    } }, t('save_keywords'));
    box.replaceChildren(h('h2', {}, t('rules')), h('p', { cls: 'hint' }, t('rules_hint', { n: RULES.rules.length - draft.length })),
      list, h('p', { cls: 'actions' },
        h('button', { type: 'button', cls: 'secondary', onclick: () => { draft.push({ name: '', when: { keyword: '', match: 'contains' }, reply: { type: 'text', content: '' } }); draw(); } }, t('add_keyword')),
        save), msg, tryBox());
  }

  const esc = (s) => s.replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]);
  // sample is the message WeChat would send: a text, or a scan of a code
  // by a follower or by someone who follows through it.
  function sample(kind, v) {
    const head = `<ToUserName>gh_page_test</ToUserName><FromUserName>o_page_test</FromUserName><CreateTime>${Math.floor(Date.now() / 1000)}</CreateTime>`;
    if (kind === 'text') return `<xml>${head}<MsgType>text</MsgType><Content>${esc(v)}</Content><MsgId>1</MsgId></xml>`;
    const key = kind === 'scan' ? v : 'qrscene_' + v;
    return `<xml>${head}<MsgType>event</MsgType><Event>${kind === 'scan' ? 'SCAN' : 'subscribe'}</Event><EventKey>${esc(key)}</EventKey></xml>`;
  }

  function tryBox() {
    const out = h('div', { cls: 'answer', role: 'status' });
    const kind = h('select', { 'aria-label': t('try_kind') }, ['text', 'scan', 'subscribe'].map((k) => h('option', { value: k }, t('try_' + k))));
    const input = h('input', { required: true, placeholder: t('try_ph'), 'aria-label': t('try_value') });
    const form = h('form', { cls: 'try', onsubmit: async (e) => {
      e.preventDefault();
      try {
        const b = await send('POST', '/api/rules/test', { xml: sample(kind.value, input.value), rules: merged() });
        const r = b.reply;
        out.replaceChildren(
          h('p', {}, b.rule == null ? t('try_none') : t('try_rule', { name: b.rule })),
          r && r.type !== 'none' ? h('p', { cls: 'bubble' }, r.type === 'text' ? r.content : t('reply_kind_' + r.type, { subject: r.subject || '' })) : null,
          (b.actions || []).map((a) => h('p', { cls: 'hint' }, t('try_tag', { tag: a.tag }))));
      } catch (err) {
        out.replaceChildren(errorBox(err));
      }
    } }, kind, input, h('button', {}, t('try_go')));
    return h('div', { cls: 'trybox' }, h('h3', {}, t('try')), h('p', { cls: 'hint' }, t('try_hint')), form, out);
  }

  // ---- the accounts ------------------------------------------------------

  async function accounts() {
    const sel = $('#account');
    try {
      const list = (await api('/api/accounts')).accounts;
      if (list.length < 2) return;
      sel.replaceChildren(...list.map((a) => h('option', { value: a.id, selected: a.id === S.account }, a.name ? `${a.name} (${a.id})` : a.id === 'default' ? t('default_account') : a.id)));
      sel.hidden = false;
      sel.onchange = () => {
        S.account = sel.value;
        S.page = 0;
        S.focus = null;
        saveState();
        location.reload();
      };
    } catch {
      // One account: no selector.
    }
  }

  async function start() {
    $('#app').append(channels(), codes(), h('section', { cls: 'card', id: 'rules' }));
    accounts();
    // The numbers first; the codes (with 10 000 of them, the heaviest
    // answer) after them.
    await refresh();
    await loadRules().catch(() => { RULES = null; });
    showRules();
    await showCodes();
    document.body.dataset.ready = '1';
  }
  start();
})();
