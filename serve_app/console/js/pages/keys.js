// API keys (admins): role, programs, expiry, rate limit, last use; never a secret. Keys
// are made with `points keys create` (the secret is shown once, in a terminal).
import { action, badge, h, panel, showNotice, table, when } from "../ui.js";

const KEYS_MAX = 1000;

export default {
  id: "keys",
  title: "API keys",
  route: "/keys",
  scope: "global",
  nav: true,
  needs: "GET /v1/keys",
  async render(target, { api, can, me, refresh }) {
    const { items } = await api.all("/v1/keys", {}, KEYS_MAX);
    const mayRevoke = can("DELETE /v1/keys/{key_id}");
    target.append(
      h("h1", {}, "API keys"),
      h("p", { class: "muted" }, "Make one with ", h("code", {}, "points keys create --name NAME --role ROLE"), "."),
      panel(
        null,
        table(
          [
            { label: "Id", value: (k) => h("code", {}, k.id) },
            { label: "Name", value: (k) => k.name },
            { label: "Role", value: (k) => k.role },
            { label: "Programs", value: (k) => (k.programs ? k.programs.join(", ") : "every program") },
            { label: "Rate limit", value: (k) => (k.rate_limit ? `${k.rate_limit.per_s}/s, burst ${k.rate_limit.burst}` : "default") },
            { label: "Expires", value: (k) => when(k.expires_at) },
            { label: "Last used", value: (k) => when(k.last_used_at) },
            { label: "State", value: (k) => (k.revoked_at ? badge("revoked") : badge("active")) },
            {
              label: "",
              value: (k) =>
                mayRevoke && !k.revoked_at && k.id !== me.id
                  ? action("Revoke", async () => {
                      if (!confirm(`Revoke key ${k.id} (${k.name})? Every replica refuses it within seconds.`)) return;
                      await api.delete(`/v1/keys/${encodeURIComponent(k.id)}`);
                      await refresh();
                      showNotice(`Key ${k.id} revoked.`);
                    }, { class: "danger", "data-revoke": k.id })
                  : null,
            },
          ],
          items,
          { id: "keys" },
        ),
      ),
    );
  },
};
