// Triggers: per source, the triggers with their status and counters, enable, disable, delete,
// edit (the API has no update: the console deletes and creates again, and says so) and a form
// that creates one, its fire and clear conditions built like the live table's filter. A
// trigger's page lists its deliveries with their attempts, dead letters apart, each
// redeliverable. Only what the credential's schema offers is shown.
import { esc, gql, poll } from './api.js';
import { filterBuilder } from './filter.js';
import { describe } from './live.js';

/** The root fields of this credential's schema. */
async function rootFields() {
  const data = await gql('{ query: __type(name: "Query") { fields { name } } mutation: __type(name: "Mutation") { fields { name } } }');
  return {
    query: new Set((data.query?.fields ?? []).map((f) => f.name)),
    mutation: new Set((data.mutation?.fields ?? []).map((f) => f.name)),
  };
}

const COUNTERS = 'counters { fired cleared pending delivered dead }';

function counters(c) {
  return `fired ${c.fired} · cleared ${c.cleared} · pending ${c.pending} · delivered ${c.delivered} · <span class="${
    c.dead > 0 ? 'error' : ''
  }">dead ${c.dead}</span>`;
}

export function triggersPage(root) {
  root.innerHTML = '<h1>Triggers</h1><p class="state" role="status">Loading…</p><div class="sources"></div>';
  const state = root.querySelector('.state');
  const holder = root.querySelector('.sources');
  let sources = [];
  let fields;

  async function refresh() {
    try {
      for (const source of sources) {
        const data = await gql(
          `{ list: ${source}_triggers { name status webhook fire clear declared ${COUNTERS} } }`,
        );
        const body = holder.querySelector(`section[data-source="${source}"] tbody`);
        const can = (action) => fields.mutation.has(`${action}_${source}_trigger`);
        body.innerHTML = data.list
          .map(
            (t) => `<tr data-trigger="${esc(t.name)}">
              <td><a href="#/triggers/${encodeURIComponent(source)}/${encodeURIComponent(t.name)}">${esc(t.name)}</a>${
                t.declared ? ' <span class="badge">declared</span>' : ''
              }</td>
              <td><span class="badge badge-${esc(t.status)}">${esc(t.status)}</span></td>
              <td>${esc(t.webhook)}</td>
              <td><code>${esc(t.fire)}</code>${t.clear ? `<br>clear: <code>${esc(t.clear)}</code>` : ''}</td>
              <td>${counters(t.counters)}</td>
              <td>${[
                t.status === 'ACTIVE' && can('disable') ? `<button type="button" data-action="disable" data-name="${esc(t.name)}">Disable</button>` : '',
                t.status !== 'ACTIVE' && can('enable') ? `<button type="button" data-action="enable" data-name="${esc(t.name)}">Enable</button>` : '',
                can('delete') && !t.declared ? `<button type="button" data-action="delete" data-name="${esc(t.name)}">Delete</button>` : '',
              ].join(' ')}</td>
            </tr>`,
          )
          .join('');
      }
      state.textContent = sources.length === 0 ? 'This credential may see no trigger.' : '';
      state.classList.remove('error');
    } catch (error) {
      state.textContent = `Cannot read the triggers: ${error.message}`;
      state.classList.add('error');
    }
  }

  async function start() {
    fields = await rootFields();
    const { viewer } = await gql('{ viewer { sources { name } } }');
    sources = viewer.sources.map((s) => s.name).filter((s) => fields.query.has(`${s}_triggers`));
    holder.innerHTML = sources
      .map(
        (s) => `<section data-source="${esc(s)}" aria-label="Triggers of ${esc(s)}">
          <h2>${esc(s)}</h2>
          <table aria-label="Triggers of ${esc(s)}"><thead><tr><th scope="col">Trigger</th><th scope="col">Status</th>
            <th scope="col">Webhook</th><th scope="col">Conditions</th><th scope="col">Counters</th><th scope="col"></th></tr></thead>
            <tbody></tbody></table>
          ${fields.mutation.has(`create_${s}_trigger`) ? `<details class="create"><summary>New trigger on ${esc(s)}</summary></details>` : ''}
        </section>`,
      )
      .join('');
    for (const source of sources) {
      const details = holder.querySelector(`section[data-source="${source}"] details.create`);
      if (details) {
        details.addEventListener('toggle', () => details.open && createForm(details, source), { once: true });
      }
      holder.querySelector(`section[data-source="${source}"] tbody`).addEventListener('click', async (event) => {
        const { action, name } = event.target.dataset;
        if (!action) {
          return;
        }
        if (action === 'delete' && !window.confirm(`Delete trigger ${name}? Its state and deliveries go with it.`)) {
          return;
        }
        try {
          await gql(`mutation($name: String!) { ${action}_${source}_trigger(name: $name) { name } }`, { name });
        } catch (error) {
          state.textContent = `${action} ${name}: ${error.message}`;
          state.classList.add('error');
        }
        poller.now();
      });
    }
    poller.now();
  }

  const poller = poll(refresh);
  start().catch((error) => {
    state.textContent = `Cannot read the triggers: ${error.message}`;
    state.classList.add('error');
  });
  return poller.stop;
}

/** The form that creates a trigger on `source` (also used to edit one: `existing`). */
export async function createForm(holder, source, existing = null, done = () => {}) {
  const meta = await describe(source);
  const form = document.createElement('form');
  form.className = 'trigger-form';
  form.setAttribute('aria-label', existing ? `Edit trigger ${existing.name}` : `New trigger on ${source}`);
  form.innerHTML = `
    <label>Name <input name="name" required value="${esc(existing?.name ?? '')}" ${existing ? 'readonly' : ''}></label>
    <label>Webhook URL <input name="webhook" type="url" required placeholder="${existing ? 'the full URL again: only its host is shown' : 'https://example.com/hook'}"></label>
    <fieldset><legend>Fires when a row enters</legend><div class="filter fire"></div></fieldset>
    <fieldset><legend>Clears when a row leaves (empty: when it no longer fires)</legend><div class="filter clear"></div></fieldset>
    <label>Attempts <input name="attempts" type="number" min="1" value="${existing?.retry?.attempts ?? 10}"></label>
    <label><input name="fire_existing" type="checkbox"> Fire for rows that already match</label>
    <div class="toolbar"><button type="submit">${existing ? 'Save (deletes and creates again)' : 'Create'}</button>
      <span class="form-state" role="status"></span></div>`;
  holder.append(form);
  let fire = existing ? JSON.parse(existing.fire) : null;
  let clear = existing?.clear ? JSON.parse(existing.clear) : null;
  filterBuilder(form.querySelector('.fire'), meta, fire, (where) => {
    fire = where;
  }, { immediate: true });
  filterBuilder(form.querySelector('.clear'), meta, clear, (where) => {
    clear = where;
  }, { immediate: true });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const said = form.querySelector('.form-state');
    const data = new FormData(form);
    const input = {
      name: data.get('name'),
      webhook: data.get('webhook'),
      fire: fire ?? {},
      retry: { attempts: Number(data.get('attempts')) },
      fire_existing: data.get('fire_existing') === 'on',
    };
    if (clear) {
      input.clear = clear;
    }
    try {
      if (existing) {
        await gql(`mutation($name: String!) { delete_${source}_trigger(name: $name) { name } }`, { name: existing.name });
      }
      await gql(`mutation($input: ${source}TriggerInput!) { create_${source}_trigger(input: $input) { name } }`, { input });
      said.textContent = `${existing ? 'Saved' : 'Created'} ${input.name}`;
      done(input.name);
    } catch (error) {
      said.textContent = `Not ${existing ? 'saved' : 'created'}: ${error.message}`;
      said.classList.add('error');
    }
  });
  return form;
}

export function triggerPage(root, source, name) {
  root.innerHTML = `
    <p><a href="#/triggers">← Triggers</a></p>
    <h1>Trigger ${esc(name)} <small>on ${esc(source)}</small></h1>
    <p class="summary"></p>
    <p class="state" role="status">Loading…</p>
    <div class="toolbar" role="group" aria-label="Deliveries shown">
      <label><input type="radio" name="show" value="" checked> All deliveries</label>
      <label><input type="radio" name="show" value="DEAD"> Dead letters</label>
    </div>
    <table aria-label="Deliveries"><thead><tr><th scope="col">Delivery</th><th scope="col">Event</th><th scope="col">Status</th>
      <th scope="col">Attempts</th><th scope="col">Last answer</th><th scope="col">Created</th><th scope="col"></th></tr></thead>
      <tbody></tbody></table>
    <details class="edit"><summary>Edit</summary></details>`;
  const state = root.querySelector('.state');
  const body = root.querySelector('tbody');
  let show = '';
  let trigger = null;
  let canRedeliver = false;

  async function refresh() {
    try {
      const data = await gql(
        `query($name: String!, $status: DeliveryStatus) { trigger: ${source}_trigger(name: $name) {
          name status webhook fire clear retry { attempts } ${COUNTERS}
          deliveries(limit: 100, status: $status) { id event_id event_type status attempts last_status last_error created_at
            recent_attempts(limit: 5) { attempt started_at duration_ms status error } } } }`,
        { name, status: show || null },
      );
      trigger = data.trigger;
      if (!trigger) {
        state.textContent = 'No such trigger (or not one this credential may see).';
        state.classList.add('error');
        return;
      }
      root.querySelector('.summary').innerHTML = `<span class="badge badge-${esc(trigger.status)}">${esc(trigger.status)}</span> → ${esc(
        trigger.webhook,
      )} · fire <code>${esc(trigger.fire)}</code>${trigger.clear ? ` · clear <code>${esc(trigger.clear)}</code>` : ''} · ${counters(
        trigger.counters,
      )}`;
      state.textContent = trigger.deliveries.length === 0 ? (show ? 'No dead letters.' : 'No deliveries yet.') : '';
      state.classList.remove('error');
      body.innerHTML = trigger.deliveries
        .map(
          (d) => `<tr data-delivery="${esc(d.id)}" class="delivery-${esc(d.status)}">
            <td>${esc(d.id)}</td><td>${esc(d.event_type)} <code>${esc(d.event_id)}</code></td>
            <td><span class="badge badge-${esc(d.status)}">${esc(d.status)}</span></td>
            <td><details><summary>${d.attempts}</summary><ol>${d.recent_attempts
              .map(
                (a) => `<li>#${a.attempt} ${esc(a.started_at)}: ${a.status ?? 'no answer'} in ${a.duration_ms} ms${
                  a.error ? ` (${esc(a.error)})` : ''
                }</li>`,
              )
              .join('')}</ol></details></td>
            <td>${d.last_status ?? ''} ${esc(d.last_error ?? '')}</td><td>${esc(d.created_at)}</td>
            <td>${
              canRedeliver && (d.status === 'DEAD' || d.status === 'DELIVERED')
                ? `<button type="button" data-redeliver="${esc(d.id)}">Redeliver</button>`
                : ''
            }</td></tr>`,
        )
        .join('');
    } catch (error) {
      state.textContent = `Cannot read the trigger: ${error.message}`;
      state.classList.add('error');
    }
  }

  const poller = poll(refresh);

  root.querySelector('[aria-label="Deliveries shown"]').addEventListener('change', (event) => {
    show = event.target.value;
    poller.now();
  });
  body.addEventListener('click', async (event) => {
    const id = event.target.dataset.redeliver;
    if (!id) {
      return;
    }
    event.target.disabled = true;
    try {
      await gql(`mutation($name: String!, $from: ID!) { redeliver_${source}_trigger(name: $name, from: $from) { id status } }`, {
        name,
        from: id,
      });
      state.textContent = `Delivery ${id} queued again`;
    } catch (error) {
      state.textContent = `Not redelivered: ${error.message}`;
      state.classList.add('error');
    }
    poller.now();
  });
  const edit = root.querySelector('details.edit');
  rootFields().then((fields) => {
    canRedeliver = fields.mutation.has(`redeliver_${source}_trigger`);
    const canEdit = fields.mutation.has(`create_${source}_trigger`) && fields.mutation.has(`delete_${source}_trigger`);
    edit.hidden = !canEdit;
    edit.addEventListener(
      'toggle',
      () => {
        if (edit.open && trigger) {
          createForm(edit, source, trigger, () => poller.now());
        }
      },
      { once: true },
    );
    poller.now();
  });
  return poller.stop;
}
