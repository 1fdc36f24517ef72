"""``spec tree``: optimise, inspect and draw candidate trees."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    tree = sub.add_parser("tree", help="optimise, show and draw candidate trees",
                          description="Work with candidate trees: optimise one from measured acceptance statistics "
                          "(and optionally a verify-cost curve), or show and draw a tree file.")
    actions = tree.add_subparsers(dest="action", required=True)
    opt = actions.add_parser(
        "optimise", help="the best tree for acceptance statistics",
        description="Choose the tree with the largest expected accepted length for a node budget (DP, exact), or, "
        "with --cost-curve, the budget and depth with the most expected tokens per second.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    opt.add_argument("--stats", required=True, help="acceptance statistics JSON (spec.trees.AcceptanceStats.save)")
    opt.add_argument("--budget", type=int, default=16, help="candidate nodes (the root is not counted); with "
                     "--cost-curve, the largest budget considered")
    opt.add_argument("--depth", type=int, default=None, help="maximum depth (default: the table's depth)")
    opt.add_argument("--method", choices=["dp", "greedy"], default="dp", help="dp: exact optimum; greedy: Medusa's")
    opt.add_argument("--cost-curve", default=None, help='JSON {"tree tokens": seconds per verify}, e.g. from '
                     "spec.bench.measure_verify_costs; switches to hardware-aware sizing")
    opt.add_argument("--out", required=True, help="where to write the tree JSON")
    opt.add_argument("--png", default=None, help="also draw the tree to this PNG")
    opt.set_defaults(func=_optimise)
    show = actions.add_parser("show", help="print a tree file's choices and statistics; optionally draw it",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    show.add_argument("tree", help="a tree JSON file, or a bare Medusa choices list")
    show.add_argument("--stats", default=None, help="acceptance statistics to label nodes with")
    show.add_argument("--png", default=None, help="draw the tree to this PNG")
    show.set_defaults(func=_show)


def _optimise(args: argparse.Namespace) -> int:
    from spec.apps.options import check_int
    from spec.errors import OptionError
    from spec.io import check_writable_file
    from spec.trees import (choose_tree_for_hardware, draw_tree, expected_accepted_length, greedy_tree, optimal_tree,
                            save_tree)
    from spec.trees.io import load_cost_curve, load_stats

    # Every option and input file first; the optimisation runs only when all are usable.
    check_int(args.budget, "--budget", 1, hint=" candidate nodes")
    if args.depth is not None:
        check_int(args.depth, "--depth", 1, hint=" (omit it to use the statistics' depth)")
    check_writable_file(args.out, "--out file")
    if args.png:
        check_writable_file(args.png, "--png file")
    stats = load_stats(args.stats)
    curve = load_cost_curve(args.cost_curve) if args.cost_curve else None
    if curve is not None and args.method == "greedy":
        raise OptionError("--cost-curve sizes the tree with the exact DP; drop --method greedy (or --cost-curve).")
    depth = min(args.depth or stats.depth, stats.depth)
    capacity = sum(stats.width ** d for d in range(1, depth + 1))
    if curve is None and args.budget > capacity:
        raise OptionError(f"--budget {args.budget} candidates do not fit in depth {depth} with {stats.width} ranks "
                          f"(at most {capacity}); lower --budget or raise --depth (the statistics go to depth "
                          f"{stats.depth}).")
    meta = {"stats": stats.to_dict(), "method": args.method}
    if curve is not None:
        sized = choose_tree_for_hardware(stats, curve, max_budget=args.budget, max_depth=args.depth)
        tree = sized.tree
        meta.update(cost_curve=curve, budget=sized.budget, depth=sized.depth,
                    predicted_tokens_per_second=sized.tokens_per_second)
    elif args.method == "greedy":
        tree = greedy_tree(stats, args.budget, args.depth)
    else:
        result = optimal_tree(stats, args.budget, args.depth)
        tree = result.tree
        meta["curve"] = list(result.curve)
    meta["expected_length"] = expected_accepted_length(tree, stats)
    save_tree(args.out, tree, meta)
    if args.png:
        draw_tree(tree, args.png, stats)
    print(f"{tree.num_nodes - 1} candidates, depth {tree.max_depth}, expected accepted length "
          f"{meta['expected_length']:.3f} -> {args.out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from spec.errors import InvalidTreeError
    from spec.io import check_writable_file
    from spec.io.files import is_real
    from spec.trees import draw_tree, expected_accepted_length, load_tree, tree_to_choices
    from spec.trees.io import load_stats

    if args.png:
        check_writable_file(args.png, "--png file")
    tree, meta = load_tree(args.tree)
    stats = load_stats(args.stats) if args.stats else None
    recorded = meta.get("expected_length")
    if stats is None and recorded is not None and not is_real(recorded):
        raise InvalidTreeError(f"{args.tree}: metadata expected_length must be a number, got {recorded!r}; "
                               "save the tree again or pass --stats to compute it.")
    print(f"{tree.num_nodes - 1} candidates, depth {tree.max_depth}, {len(tree.leaves)} leaves")
    print(f"choices: {json.dumps(tree_to_choices(tree))}")
    if stats is not None:
        print(f"expected accepted length: {expected_accepted_length(tree, stats):.3f}")
    elif recorded is not None:
        print(f"expected accepted length (recorded): {recorded:.3f}")
    if args.png:
        draw_tree(tree, args.png, stats)
        print(f"drawn to {args.png}")
    return 0
