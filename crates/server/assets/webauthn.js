// Tessera's one page script: runs the WebAuthn ceremony of each form marked data-webauthn ("create" to
// register a passkey, "get" to sign in with one). It asks the server for the options (data-start, with the
// form's csrf), lets the browser's authenticator answer, and posts the answer with the form.
(function () {
  "use strict";

  function bytes(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) base64 += "=";
    var raw = atob(base64);
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out.buffer;
  }

  function text(buffer) {
    var view = new Uint8Array(buffer);
    var raw = "";
    for (var i = 0; i < view.length; i++) raw += String.fromCharCode(view[i]);
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  async function run(form) {
    var started = await fetch(form.dataset.start, {
      method: "POST",
      credentials: "same-origin",
      body: new URLSearchParams({ csrf: form.elements.csrf.value }),
    });
    if (!started.ok) throw new Error("start");
    var answer = await started.json();
    var options = answer.options.publicKey;
    options.challenge = bytes(options.challenge);
    var credential;
    var response;
    if (form.dataset.webauthn === "create") {
      options.user.id = bytes(options.user.id);
      (options.excludeCredentials || []).forEach(function (c) { c.id = bytes(c.id); });
      credential = await navigator.credentials.create({ publicKey: options });
      response = {
        attestationObject: text(credential.response.attestationObject),
        clientDataJSON: text(credential.response.clientDataJSON),
      };
    } else {
      (options.allowCredentials || []).forEach(function (c) { c.id = bytes(c.id); });
      credential = await navigator.credentials.get({ publicKey: options });
      response = {
        authenticatorData: text(credential.response.authenticatorData),
        clientDataJSON: text(credential.response.clientDataJSON),
        signature: text(credential.response.signature),
        userHandle: credential.response.userHandle ? text(credential.response.userHandle) : null,
      };
    }
    form.elements.handle.value = answer.handle;
    form.elements.credential.value = JSON.stringify({
      id: credential.id,
      rawId: text(credential.rawId),
      type: credential.type,
      extensions: credential.getClientExtensionResults(),
      response: response,
    });
    form.submit();
  }

  document.querySelectorAll("form[data-webauthn]").forEach(function (form) {
    var status = form.querySelector("[role=status]");
    var button = form.querySelector("button");
    if (!window.PublicKeyCredential) {
      status.textContent = "This browser cannot use passkeys.";
      button.disabled = true;
      return;
    }
    button.addEventListener("click", function () {
      button.disabled = true;
      status.textContent = "Waiting for your passkey…";
      run(form).catch(function () {
        button.disabled = false;
        status.textContent = "The passkey did not answer. Try again.";
      });
    });
  });
})();
