// The filter builder: conditions on the columns (with the operators the column's type offers,
// read from the schema), grouped with all of / any of and negated with not, turned into the
// `where` a subscription takes. A `where` from the URL is read back into the builder.
import { esc } from './api.js';

const group = (op = 'and', items = [], not = false) => ({ kind: 'group', op, not, items });
const condition = (column, operator = '_eq', value = '') => ({ kind: 'condition', column, operator, value });

/** The builder's tree for a `where` (a condition per column operator, a group per `_and`,
 * `_or` or object of several keys). */
function toNode(where) {
  const keys = Object.keys(where ?? {});
  if (keys.length !== 1) {
    return group('and', keys.map((k) => toNode({ [k]: where[k] })));
  }
  const [key] = keys;
  const value = where[key];
  if (key === '_and' || key === '_or') {
    return group(key.slice(1), [].concat(value).map(toNode));
  }
  if (key === '_not') {
    const inner = toNode(value);
    return inner.kind === 'group' && !inner.not ? { ...inner, not: true } : group('and', [inner], true);
  }
  const operators = Object.entries(value ?? {}).map(([op, operand]) =>
    condition(key, op, Array.isArray(operand) ? operand.join(', ') : String(operand)),
  );
  return operators.length === 1 ? operators[0] : group('and', operators);
}

function operand(spec, text) {
  const one = (t) => {
    const trimmed = t.trim();
    if (spec?.scalar === 'Int' || spec?.scalar === 'Float') {
      const n = Number(trimmed);
      return trimmed !== '' && Number.isFinite(n) ? n : trimmed;
    }
    if (spec?.scalar === 'Boolean') {
      return trimmed === 'true';
    }
    return trimmed;
  };
  return spec?.list ? text.split(',').filter((t) => t.trim() !== '').map(one) : one(text);
}

/** The `where` of a node, or null when it has no complete condition. */
function toWhere(node, meta) {
  if (node.kind === 'condition') {
    const spec = (meta.operators[node.column] ?? []).find((o) => o.name === node.operator);
    if (!spec || (node.value.trim() === '' && spec.scalar !== 'Boolean')) {
      return null;
    }
    return { [node.column]: { [node.operator]: operand(spec, node.value) } };
  }
  const items = node.items.map((n) => toWhere(n, meta)).filter((w) => w !== null);
  if (items.length === 0) {
    return null;
  }
  const combined = items.length === 1 ? items[0] : { [`_${node.op}`]: items };
  return node.not ? { _not: combined } : combined;
}

/** Draws the builder into `root`; `onChange(where)` gets the `where` on Apply, or on every
 * edit with `{immediate: true}` (for forms that send it themselves). */
export function filterBuilder(root, meta, where, onChange, { immediate = false } = {}) {
  const columns = Object.keys(meta.operators);
  let tree = where ? toNode(where) : group();
  if (tree.kind !== 'group') {
    tree = group('and', [tree]);
  }
  let ids = 0;

  function conditionHtml(node, path) {
    const id = `c${(ids += 1)}`;
    const specs = meta.operators[node.column] ?? [];
    const spec = specs.find((o) => o.name === node.operator);
    const value =
      spec?.scalar === 'Boolean'
        ? `<select data-path="${path}" data-field="value" aria-label="Value">${['true', 'false']
            .map((v) => `<option ${node.value === v ? 'selected' : ''}>${v}</option>`)
            .join('')}</select>`
        : `<input data-path="${path}" data-field="value" aria-label="Value" value="${esc(node.value)}" placeholder="${
            spec?.list ? 'values, separated by commas' : 'value'
          }">`;
    return `<div class="condition" role="group" aria-labelledby="${id}">
      <span id="${id}" hidden>Condition</span>
      <select data-path="${path}" data-field="column" aria-label="Column">${columns
        .map((c) => `<option ${c === node.column ? 'selected' : ''}>${esc(c)}</option>`)
        .join('')}</select>
      <select data-path="${path}" data-field="operator" aria-label="Operator">${specs
        .map((o) => `<option ${o.name === node.operator ? 'selected' : ''}>${esc(o.name)}</option>`)
        .join('')}</select>
      ${value}
      <button type="button" data-path="${path}" data-action="remove" aria-label="Remove this condition">✕</button>
    </div>`;
  }

  function groupHtml(node, path) {
    const items = node.items
      .map((item, i) => (item.kind === 'group' ? groupHtml(item, `${path}.${i}`) : conditionHtml(item, `${path}.${i}`)))
      .join('');
    return `<div class="group" role="group" aria-label="${node.op === 'and' ? 'All of' : 'Any of'}">
      <label><input type="checkbox" data-path="${path}" data-field="not" ${node.not ? 'checked' : ''}> not</label>
      <select data-path="${path}" data-field="op" aria-label="Combine conditions">
        <option value="and" ${node.op === 'and' ? 'selected' : ''}>all of</option>
        <option value="or" ${node.op === 'or' ? 'selected' : ''}>any of</option>
      </select>
      ${items}
      <button type="button" data-path="${path}" data-action="condition">+ condition</button>
      <button type="button" data-path="${path}" data-action="group">+ group</button>
      ${path === 'r' ? '' : `<button type="button" data-path="${path}" data-action="remove" aria-label="Remove this group">✕</button>`}
    </div>`;
  }

  /** The node at a path ("r", "r.0", "r.0.2") and its parent. */
  function at(path) {
    let parent = null;
    let node = tree;
    for (const index of path.split('.').slice(1)) {
      parent = node;
      node = node.items[Number(index)];
    }
    return { node, parent };
  }

  function draw() {
    ids = 0;
    const current = toWhere(tree, meta);
    root.innerHTML = `${groupHtml(tree, 'r')}
      <div class="toolbar">
        ${immediate ? '' : '<button type="button" data-action="apply">Apply filter</button>'}
        <button type="button" data-action="clear">Clear</button>
      </div>
      <code aria-label="The where argument">${esc(current ? JSON.stringify(current) : '(every row)')}</code>`;
  }

  root.addEventListener('change', (event) => {
    const { path, field } = event.target.dataset;
    // A typed value is already in the tree (`input`); drawing again here would replace the
    // button a click that blurred the field is about to land on.
    if (!path || (field === 'value' && event.target.tagName === 'INPUT')) {
      return;
    }
    const { node } = at(path);
    if (field === 'not') {
      node.not = event.target.checked;
    } else if (field === 'column') {
      node.column = event.target.value;
      node.operator = (meta.operators[node.column] ?? [])[0]?.name ?? '_eq';
    } else {
      node[field] = event.target.value;
    }
    draw();
    if (immediate) {
      onChange(toWhere(tree, meta));
    }
  });
  root.addEventListener('input', (event) => {
    const { path, field } = event.target.dataset;
    if (path && field === 'value') {
      at(path).node.value = event.target.value;
      const current = toWhere(tree, meta);
      root.querySelector('code').textContent = current ? JSON.stringify(current) : '(every row)';
      if (immediate) {
        onChange(current);
      }
    }
  });
  root.addEventListener('click', (event) => {
    const { path, action } = event.target.dataset;
    if (!action) {
      return;
    }
    if (action === 'apply') {
      onChange(toWhere(tree, meta));
      return;
    }
    if (action === 'clear') {
      tree = group();
      draw();
      onChange(null);
      return;
    }
    const { node, parent } = at(path);
    if (action === 'condition') {
      node.items.push(condition(columns[0], (meta.operators[columns[0]] ?? [])[0]?.name ?? '_eq'));
    } else if (action === 'group') {
      node.items.push(group('or', [condition(columns[0], (meta.operators[columns[0]] ?? [])[0]?.name ?? '_eq')]));
    } else if (action === 'remove' && parent) {
      parent.items.splice(parent.items.indexOf(node), 1);
    }
    draw();
    if (immediate) {
      onChange(toWhere(tree, meta));
    }
  });
  draw();
}
