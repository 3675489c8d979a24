// Upload files into a knowledge base (the page's sidebar). Loaded before app.js, whose
// globals ($, state, askKey, loadKBs, showError) it uses when called.
"use strict";

function upload() {
  const name = $("upload-kb").value.trim();
  const files = $("upload-files").files;
  const status = $("upload-status");
  const bar = $("upload-progress");
  status.classList.remove("error");
  if (!name || !files.length) {
    status.textContent = "Give a knowledge-base name and choose files.";
    status.classList.add("error");
    return;
  }
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const xhr = new XMLHttpRequest();  // fetch cannot report upload progress
  xhr.open("POST", `/ui/api/kbs/${encodeURIComponent(name)}/files`);
  if (state.key) xhr.setRequestHeader("Authorization", `Bearer ${state.key}`);
  bar.hidden = false; bar.removeAttribute("value");
  $("upload-button").disabled = true;
  let seen = 0;
  const fail = (message) => { status.textContent = message; status.classList.add("error"); };
  const readLines = () => {  // the answer is NDJSON: progress lines, then the report
    const lines = xhr.responseText.split("\n");
    for (const line of lines.slice(seen, -1)) {
      const msg = JSON.parse(line);
      if (msg.error) fail(`Ingest failed: ${msg.error.message}`);
      else if (msg.report) {
        const r = msg.report;
        status.textContent = `${r.kb}: ${r.added.length} added, ${r.updated.length} updated, ` +
          `${r.unchanged.length} unchanged; ${r.chunks} chunks`;
        bar.max = 1; bar.value = 1;
      } else {
        bar.max = Math.max(msg.total, 1); bar.value = msg.done;
        status.textContent = msg.file ? `Indexing ${msg.file} (${msg.done + 1}/${msg.total})` : "Saving\u2026";
      }
    }
    seen = lines.length - 1;
  };
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; }
    status.textContent = `Uploading\u2026 ${e.lengthComputable ? Math.round(100 * e.loaded / e.total) + "%" : ""}`;
  };
  xhr.onprogress = () => { if (xhr.status === 200) readLines(); };
  xhr.onload = async () => {
    $("upload-button").disabled = false;
    if (xhr.status !== 200) {
      let message = xhr.statusText;
      try { message = JSON.parse(xhr.responseText).error.message; } catch { /* keep */ }
      if (xhr.status === 401) askKey(message);
      fail(`Upload failed (HTTP ${xhr.status}): ${message}`);
      bar.hidden = true;
      return;
    }
    readLines();
    await loadKBs().catch((error) => showError(error, "Could not list knowledge bases"));
  };
  xhr.onerror = () => { $("upload-button").disabled = false; bar.hidden = true; fail("Upload failed: the server could not be reached."); };
  xhr.send(form);
}

