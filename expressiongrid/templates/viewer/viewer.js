// The grid viewer's behaviour. Everything shown comes from the JSON block above and is written with
// textContent or as attribute values, never as HTML, so labels and prompts stay text.
"use strict";
(function () {
  var data = JSON.parse(document.getElementById("viewer-data").textContent);
  var axes = data.axes;
  var roles = {rows: 0, cols: 1, pages: 2};
  var order = axes.map(function (a) { return a.values.map(function (_, i) { return i; }); });
  var hidden = axes.map(function () { return {}; });
  var pageValue = 0;
  var zoom = 160;
  var pick = null;  // the first cell chosen for a side-by-side comparison
  var byPosition = {};
  data.cells.forEach(function (c) { byPosition[c.at.join(",")] = c; });

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function label(axis, index) {
    var text = axes[axis].values[index].label;
    return text === "" ? "(" + axes[axis].name + " " + (index + 1) + ")" : text;
  }
  function visible(axis) { return order[axis].filter(function (i) { return !hidden[axis][i]; }); }
  function cellAt(r, c, p) {
    var at = [0, 0, 0];
    at[roles.rows] = r; at[roles.cols] = c; at[roles.pages] = p;
    return byPosition[at.join(",")];
  }

  // -- axis choice -----------------------------------------------------------------------------------
  var selects = {rows: document.getElementById("rows-axis"), cols: document.getElementById("cols-axis"),
                 pages: document.getElementById("pages-axis")};
  Object.keys(selects).forEach(function (role) {
    axes.forEach(function (a, i) {
      var opt = el("option", a.name); opt.value = String(i); selects[role].appendChild(opt);
    });
    selects[role].addEventListener("change", function () {
      var axis = Number(selects[role].value), previous = roles[role], pagesBefore = roles.pages;
      // The role that had this axis takes the one this role gave up: the three roles stay a permutation.
      Object.keys(roles).forEach(function (other) { if (roles[other] === axis) roles[other] = previous; });
      roles[role] = axis;
      if (roles.pages !== pagesBefore) pageValue = visible(roles.pages)[0] || 0;
      render();
    });
  });

  var pageSelect = document.getElementById("page-select");
  pageSelect.addEventListener("change", function () { pageValue = Number(pageSelect.value); render(); });

  var zoomInput = document.getElementById("zoom");
  zoomInput.addEventListener("input", function () {
    zoom = Number(zoomInput.value);
    document.getElementById("zoom-value").textContent = zoom + " px";
    document.documentElement.style.setProperty("--cell", zoom + "px");
    // Past the thumbnail's size the full image is sharper.
    document.querySelectorAll("#grid td img").forEach(function (img) {
      var want = zoom > data.thumb_side ? img.dataset.full : img.dataset.thumb;
      if (want && img.getAttribute("src") !== want) img.setAttribute("src", want);
    });
  });

  var scoresBox = document.getElementById("show-scores");
  if (!data.analysed) document.getElementById("scores-toggle").hidden = true;
  scoresBox.addEventListener("change", function () { document.body.classList.toggle("no-scores", !scoresBox.checked); });

  document.getElementById("values-toggle").addEventListener("click", function () {
    var panel = document.getElementById("values"); panel.hidden = !panel.hidden;
  });

  // -- hiding and moving rows and columns --------------------------------------------------------------
  function valuesPanel(role, box) {
    clear(box);
    var axis = roles[role];
    box.appendChild(el("h3", (role === "rows" ? "Rows: " : "Columns: ") + axes[axis].name));
    order[axis].forEach(function (index, position) {
      var item = el("div", null, "value-item");
      item.dataset.role = role; item.dataset.value = String(index);
      var box2 = el("input"); box2.type = "checkbox"; box2.className = "show"; box2.checked = !hidden[axis][index];
      box2.addEventListener("change", function () { hidden[axis][index] = !box2.checked; render(); });
      var up = el("button", "◀", "earlier"); up.type = "button"; up.title = "move earlier";
      var down = el("button", "▶", "later"); down.type = "button"; down.title = "move later";
      up.disabled = position === 0; down.disabled = position === order[axis].length - 1;
      up.addEventListener("click", function () { move(axis, position, -1); });
      down.addEventListener("click", function () { move(axis, position, 1); });
      var name = el("label", label(axis, index));
      item.appendChild(box2); item.appendChild(up); item.appendChild(down); item.appendChild(name);
      box.appendChild(item);
    });
  }
  function move(axis, position, step) {
    var list = order[axis], other = position + step;
    if (other < 0 || other >= list.length) return;
    var t = list[position]; list[position] = list[other]; list[other] = t;
    render();
  }

  // -- the table --------------------------------------------------------------------------------------
  function scoreLine(sample) {
    var box = el("div", null, "scores");
    (sample.scores || []).slice(0, 3).forEach(function (s, i) {
      if (i) box.appendChild(document.createTextNode(" · "));
      box.appendChild(document.createTextNode(s[0] + " " + s[1]));
    });
    return box;
  }
  function cellNode(cell) {
    var td = el("td");
    if (!cell || !cell.samples.length) { td.appendChild(el("div", "—", "missing")); return td; }
    var sample = cell.samples[0];
    td.dataset.key = sample.key;
    td.title = sample.title;
    if (sample.thumb) {
      var img = el("img");
      img.loading = "lazy"; img.decoding = "async"; img.alt = sample.title;
      img.width = data.cell_size[0]; img.height = data.cell_size[1];
      img.dataset.thumb = sample.thumb; img.dataset.full = sample.full;
      img.setAttribute("src", zoom > data.thumb_side ? sample.full : sample.thumb);
      td.appendChild(img);
    } else {
      td.appendChild(el("div", sample.status === "failed" ? "failed" : sample.status, "missing"));
    }
    if (sample.scores) td.appendChild(scoreLine(sample));
    if (pick && pick.key === sample.key) td.classList.add("picked");
    // A cell is a button for the keyboard too: Tab reaches it, Enter or Space opens it.
    td.tabIndex = 0;
    td.setAttribute("role", "button");
    td.addEventListener("click", function () { chosen(cell, 0); });
    td.addEventListener("keydown", function (event) {
      if (event.key !== "Enter" && event.key !== " ") return;
      event.preventDefault();
      chosen(cell, 0);
    });
    return td;
  }
  function render() {
    Object.keys(selects).forEach(function (role) { selects[role].value = String(roles[role]); });
    clear(pageSelect);
    visible(roles.pages).forEach(function (i) {
      var opt = el("option", label(roles.pages, i)); opt.value = String(i); pageSelect.appendChild(opt);
    });
    if (visible(roles.pages).indexOf(pageValue) < 0) pageValue = visible(roles.pages)[0] || 0;
    pageSelect.value = String(pageValue);
    document.getElementById("page-choice").hidden = axes[roles.pages].values.length < 2;
    valuesPanel("rows", document.getElementById("values-rows"));
    valuesPanel("cols", document.getElementById("values-cols"));
    var table = document.getElementById("grid");
    clear(table);
    var head = el("thead"), tr = el("tr");
    tr.appendChild(el("th", axes[roles.rows].name + " \\ " + axes[roles.cols].name, "corner"));
    var cols = visible(roles.cols);
    cols.forEach(function (c) { tr.appendChild(el("th", label(roles.cols, c))); });
    head.appendChild(tr); table.appendChild(head);
    var body = el("tbody");
    visible(roles.rows).forEach(function (r) {
      var row = el("tr");
      row.appendChild(el("th", label(roles.rows, r)));
      cols.forEach(function (c) { row.appendChild(cellNode(cellAt(r, c, pageValue))); });
      body.appendChild(row);
    });
    table.appendChild(body);
  }

  // -- one cell at full size, and two side by side ---------------------------------------------------
  var cellView = document.getElementById("cell-view"), compareView = document.getElementById("compare-view");
  var shown = null, opener = null;
  function chosen(cell, sampleIndex) {
    var sample = cell.samples[sampleIndex];
    if (pick && pick.key !== sample.key) {
      var first = pick; pick = null; hint("");
      render();
      return compare(first, sample);
    }
    open(cell, sampleIndex);
  }
  function open(cell, sampleIndex) {
    var sample = cell.samples[sampleIndex];
    shown = sample;
    document.getElementById("cell-title").textContent = sample.title + (cell.samples.length > 1 ?
      " — seed " + sample.seed : "");
    var full = document.getElementById("full");
    if (sample.full) { full.hidden = false; full.src = sample.full; full.alt = sample.title; }
    else { full.hidden = true; full.removeAttribute("src"); }
    var dl = document.getElementById("cell-scores");
    clear(dl);
    var fields = [["seed", sample.seed], ["status", sample.status]];
    if (sample.error) fields.push(["error", sample.error]);
    (sample.scores || []).forEach(function (s) { fields.push(s); });
    fields.forEach(function (f) { dl.appendChild(el("dt", f[0])); dl.appendChild(el("dd", f[1])); });
    document.getElementById("cell-parameters").textContent = sample.parameters || "(no parameters stored)";
    document.getElementById("copy-status").textContent = "";
    var nav = document.getElementById("sample-nav");
    clear(nav);
    if (cell.samples.length > 1) {
      cell.samples.forEach(function (s, i) {
        var b = el("button", "seed " + s.seed); b.type = "button"; b.disabled = i === sampleIndex;
        b.addEventListener("click", function () { open(cell, i); });
        nav.appendChild(b);
      });
    }
    cellView.hidden = false;
    opener = cell.samples[0].key;
    document.getElementById("close-cell").focus();
  }
  function figure(node, sample) {
    var img = node.querySelector("img");
    if (sample.full) { img.src = sample.full; img.alt = sample.title; img.hidden = false; } else { img.hidden = true; }
    node.querySelector("figcaption").textContent = sample.title + " (seed " + sample.seed + ")";
    node.querySelector("pre").textContent = sample.parameters || "";
  }
  function compare(a, b) {
    figure(document.getElementById("compare-a"), a);
    figure(document.getElementById("compare-b"), b);
    cellView.hidden = true;
    compareView.hidden = false;
    opener = b.key;
    document.getElementById("close-compare").focus();
  }
  // Closing a view puts the keyboard back on the cell that opened it (the table may have been redrawn).
  function closeViews() {
    var wasOpen = !cellView.hidden || !compareView.hidden;
    cellView.hidden = true; compareView.hidden = true;
    var cellNode = opener && document.querySelector('#grid td[data-key="' + opener + '"]');
    if (wasOpen && cellNode) cellNode.focus();
  }
  function hint(text) {
    var node = document.getElementById("compare-hint"); node.textContent = text; node.hidden = !text;
  }
  document.getElementById("compare-button").addEventListener("click", function () {
    pick = shown; cellView.hidden = true;
    hint("Click a second cell (or Enter on it) to compare with " + shown.title + " (Esc to cancel)");
    render();
    var first = document.querySelector('#grid td[data-key="' + opener + '"]');
    if (first) first.focus();
  });
  document.getElementById("close-cell").addEventListener("click", closeViews);
  document.getElementById("close-compare").addEventListener("click", closeViews);
  [cellView, compareView].forEach(function (view) {
    view.addEventListener("click", function (event) { if (event.target === view) closeViews(); });
  });
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    if (pick) { pick = null; hint(""); render(); }
    closeViews();
  });

  document.getElementById("copy-parameters").addEventListener("click", function () {
    var text = shown ? shown.parameters : "";
    var status = document.getElementById("copy-status");
    function fallback() {
      // file:// pages may have no clipboard API: copy through a selected text area instead.
      var area = el("textarea"); area.value = text; document.body.appendChild(area); area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      status.textContent = ok ? "copied" : "select the text above and copy it";
    }
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(function () { status.textContent = "copied"; }, fallback);
    } else {
      fallback();
    }
  });

  render();
})();
