// Every page of the console, in the navigation's order. To add one: write a module in
// this folder that exports a page (see docs/console.md) and list it here.
//
// A page: {id, title, route ("/programs/:program/x": a hash path; :program makes it a page
// of a program), scope ("global" or "program": where the nav lists it), nav (listed or
// not), needs ("METHOD /v1/template" the key must be allowed: else hidden), render(target,
// context)}.
import audit from "./audit.js";
import experiments from "./experiments.js";
import keys from "./keys.js";
import member from "./member.js";
import members from "./members.js";
import overview from "./overview.js";
import programs from "./programs.js";
import redemptions from "./redemptions.js";
import reports from "./reports.js";
import reviews from "./reviews.js";
import rewards from "./rewards.js";
import rules from "./rules.js";
import simulations from "./simulations.js";

export const PAGES = [programs, audit, keys, overview, members, member, rewards, redemptions, reviews, rules, reports, experiments, simulations];
