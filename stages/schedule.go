package stages

import (
	"context"
	"errors"
	"sync"
)

// errLimit stops a source once the plan's request limit is reached.
var errLimit = errors.New("request limit reached")

// interleave turns the source's requests into steps and emits them round
// robin over up to maxActive requests at a time, as a continuous-batching
// scheduler does. Emitting all of one request's steps before the next
// request's would fill every bounded queue with steps of a single request,
// which must run one after another, and leave all but one worker of each
// stage idle.
//
// The source runs in its own goroutine, which has returned when interleave
// does.
func interleave(ctx context.Context, src Source, limit, maxActive int, env *Env, emit func(*Step) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reqs := make(chan *Request)
	var srcErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(reqs)
		n := 0
		err := src.Requests(ctx, func(r *Request) error {
			if limit > 0 && n >= limit {
				return errLimit
			}
			n++
			if err := r.Validate(); err != nil {
				return err
			}
			select {
			case reqs <- r:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		if !errors.Is(err, errLimit) {
			srcErr = err
		}
	})
	err := roundRobin(ctx, reqs, maxActive, env, emit)
	cancel()
	for range reqs {
		// Unblock the source if it is still sending.
	}
	wg.Wait()
	if err != nil {
		return err
	}
	return srcErr
}

// roundRobin emits one step of each active request in turn, admitting a new
// request whenever fewer than maxActive are active.
func roundRobin(ctx context.Context, reqs <-chan *Request, maxActive int, env *Env, emit func(*Step) error) error {
	var active [][]*Step // the unemitted steps of each active request
	open := true
	for open || len(active) > 0 {
		// Admit: block only when nothing else can be done.
		for open && len(active) < maxActive {
			// A request holds a slot of env.inflight from admission until
			// its last step leaves the chain (Plan.Run's sink frees it), so
			// at most maxActive requests are in flight, not only being
			// emitted: a request then sees every page of those finished
			// before it.
			if env.inflight != nil {
				if len(active) == 0 {
					select {
					case env.inflight <- struct{}{}:
					case <-ctx.Done():
						return ctx.Err()
					}
				} else {
					acquired := false
					select {
					case env.inflight <- struct{}{}:
						acquired = true
					default:
					}
					if !acquired {
						break
					}
				}
			}
			var r *Request
			var ok bool
			if len(active) == 0 {
				select {
				case r, ok = <-reqs:
				case <-ctx.Done():
					return ctx.Err()
				}
			} else {
				select {
				case r, ok = <-reqs:
				default:
					ok, r = true, nil
				}
			}
			if !ok || r == nil {
				if env.inflight != nil {
					<-env.inflight // the slot taken above
				}
				if !ok {
					open = false
				}
				break
			}
			active = append(active, env.Steps(r))
		}
		next := active[:0]
		for _, steps := range active {
			if err := emit(steps[0]); err != nil {
				return err
			}
			steps[0] = nil // downstream owns it now; let it go when done
			if len(steps) > 1 {
				next = append(next, steps[1:])
			}
		}
		clear(active[len(next):])
		active = next
	}
	return nil
}
