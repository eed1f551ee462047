// The reward catalogue: cost, stock left, reserved and redeemed, a stock chart; a restock
// form for keys that may restock.
import { idempotencyKey } from "../api.js";
import { action, badge, h, number, panel, showNotice, table } from "../ui.js";
import { stockChart } from "./overview.js";

const P = "/v1/programs/{program_id}";
const REWARDS_MAX = 1000;

export default {
  id: "rewards",
  title: "Rewards",
  route: "/programs/:program/rewards",
  scope: "program",
  nav: true,
  needs: `GET ${P}/rewards`,
  async render(target, context) {
    const { api, can, params } = context;
    const base = `/v1/programs/${encodeURIComponent(params.program)}`;
    const { items } = await api.all(`${base}/rewards`, {}, REWARDS_MAX);
    const mayRestock = can(`POST ${P}/rewards/{reward_id}/restock`);
    target.append(
      h("h1", {}, "Rewards"),
      panel("Stock", stockChart(items)),
      panel(
        "Catalogue",
        table(
          [
            { label: "Reward", value: (r) => r.reward_id },
            { label: "Name", value: (r) => r.name },
            { label: "Cost", value: (r) => number(r.cost_points), num: true },
            { label: "Left", value: (r) => (r.stock === null ? "unlimited" : number(r.stock)), num: true },
            { label: "Reserved", value: (r) => number(r.reserved), num: true },
            { label: "Redeemed", value: (r) => number(r.redeemed), num: true },
            { label: "Per member", value: (r) => r.per_member_limit ?? "—", num: true },
            { label: "State", value: (r) => badge(r.active ? "active" : "inactive") },
            { label: "", value: (r) => (mayRestock && r.stock !== null ? restock(r, base, context) : null) },
          ],
          items,
          { id: "rewards", empty: "No reward yet." },
        ),
      ),
    );
  },
};

function restock(reward, base, { api, refresh }) {
  const quantity = h("input", { type: "number", min: 1, step: 1, value: 10, style: "width: 6rem", "aria-label": `Units to add to ${reward.reward_id}` });
  // One key per form: a retried click (say after a timeout) restocks once.
  let key = idempotencyKey(`console-restock-${reward.reward_id}`);
  return h(
    "div",
    { class: "actions" },
    quantity,
    action("Restock", async () => {
      const done = await api.post(
        `${base}/rewards/${encodeURIComponent(reward.reward_id)}/restock`,
        { quantity: Number(quantity.value) },
        { "Idempotency-Key": key },
      );
      key = idempotencyKey(`console-restock-${reward.reward_id}`);
      await refresh();
      showNotice(`${done.reward_id}: ${number(done.quantity)} units added.`);
    }, { class: "secondary", "data-restock": reward.reward_id }),
  );
}
